"""The error every configuration problem raises, and the helpers its one-line messages are written with: the "did you
mean" hint, and values shown cut to a readable length."""
from __future__ import annotations

import difflib
import typing
from typing import Any

from util.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file or override that cannot be used; the message says where and what to do."""

    exit_code = 2  # a usage error, as argparse exits


SHOWN = 80  # characters of a value or key that a message shows; a config's values are short, a mistake can be huge


def plain(text: object, limit: int | None = None) -> str:
    """`text` on one line: newlines, tabs and other unprintable characters escaped, as in a Python literal; cut to
    `limit` characters (and "…") when given."""
    text = str(text) if limit is None else str(text)[:limit + 1]
    text = text if text.isprintable() else repr(text)[1:-1]
    return text if limit is None else cut(text, limit)


def cut(text: str, limit: int = SHOWN) -> str:
    """`text`, or its first `limit` characters and "…"."""
    return text if len(text) <= limit else text[:limit] + "…"


def shown(value: Any, limit: int = SHOWN) -> str:
    """`repr(value)` as a message shows it: at most `limit` characters and "…". Only what is shown is visited, so a
    value of a billion items (or ints beyond Python's 4300-digit repr limit) costs no more than a short one."""
    text = ""
    for piece in _pieces(value, limit):
        text += piece
        if len(text) > limit:
            break
    return cut(text, limit)


def _pieces(value: Any, limit: int) -> typing.Iterator[str]:
    """repr(value), lazily, piece by piece: containers item by item, a string or bytes by its first `limit` + 1."""
    if isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield ", " if i else ""
            yield from _pieces(key, limit)
            yield ": "
            yield from _pieces(item, limit)
        yield "}"
    elif type(value) in (list, tuple) and value:  # YAML's sequences and our pairs; empty or other kinds: their repr
        yield "[" if type(value) is list else "("
        for i, item in enumerate(value):
            yield ", " if i else ""
            yield from _pieces(item, limit)
        yield "]" if type(value) is list else ",)" if len(value) == 1 else ")"
    elif isinstance(value, (str, bytes)) and len(value) > limit:
        yield repr(value[:limit + 1])[:-1]  # no closing quote: the message cuts it
    elif isinstance(value, int) and value.bit_length() > 4 * limit:
        yield f"<an integer of {len(str(value)) if value.bit_length() < 14000 else 'over 4000'} digits>"
    else:
        yield repr(value)


def suggest(word: object, choices: typing.Iterable[str]) -> str:
    """' (did you mean ...?)' for the closest choice, else the list of choices; `word` may be any YAML key."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid: {', '.join(sorted(choices))})"
