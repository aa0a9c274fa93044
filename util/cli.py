"""What the six commands share on their command line: a --help that shows the module's usage block as written and
each option's default, and the counts they take (`positive_int`)."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; `(default: X)` after an option's help when it has a default worth showing (not
    None, not a flag's False) that the help does not already name."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or default == [] or "%(default)" in text \
                or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def positive_int(text: str) -> int:
    """An option's whole number of at least 1 (argparse's type): anything else is argparse's one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
