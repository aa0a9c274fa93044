"""The error every configuration problem raises, and the "did you mean" hint its messages carry."""
from __future__ import annotations

import difflib
import typing


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message says where and what to do."""


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid: {', '.join(sorted(choices))})"
