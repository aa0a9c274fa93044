"""The one base class of every error a user can act on: bad input, a bad config, bad data, a refused resume, a run
that cannot go on (a full disk, a busy out_dir, a non-finite loss).

Each entry script catches UserError once and prints its message as one line (`error: ...`), with no traceback, and
exits with the error's `exit_code`; anything else is a bug and keeps its traceback. Packages raise the subclass named
for their area (config.ConfigError, pipeline.DataError, training.TrainingError ...), so a caller that can handle one
kind catches that kind only.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the message fully explains: what, which file / key / shard / value, and what to do."""

    exit_code = 1


def listed(problems: list[str], shown: int) -> str:
    """The first `shown` problems joined by "; ", and how many more there are: a list that stays one line."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")
