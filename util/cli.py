"""What the six commands share on their command line: a --help that shows the module's usage block as written and
each option's default."""
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
