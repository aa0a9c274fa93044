"""The error every configuration problem raises, and the "did you mean" hint its messages carry."""
from __future__ import annotations

import difflib
import typing

from util.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file or override that cannot be used; the message says where and what to do."""

    exit_code = 2  # a usage error, as argparse exits


def plain(text: object) -> str:
    """`text` on one line: newlines, tabs and other unprintable characters escaped, as in a Python literal."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]


def suggest(word: object, choices: typing.Iterable[str]) -> str:
    """' (did you mean ...?)' for the closest choice, else the list of choices; `word` may be any YAML key."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid: {', '.join(sorted(choices))})"
