"""The report of a run folder: the masks on the run's images, its curves, what its encoder learned, its probe table,
as PNG pictures and one index.html beside them (report.py)."""
import os
import stat
from pathlib import Path

from util.errors import UserError


class ReportError(UserError):
    """A run folder, step log or option the report cannot be drawn from; the message names it and says what to do."""


def read_regular(path: Path, what: str) -> str:
    """The text of the regular file `path`. Anything else is never opened (opening a FIFO blocks until a writer comes,
    a device can stream forever): a ReportError naming it, as is a file that cannot be read; `what` says what the
    report needs the file for."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ReportError(f"{path}: not a regular file ({kind(mode)}); {what}: move it away")
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: cannot be read ({err}); {what}") from None


def kind(mode: int) -> str:
    """What a file that is not a regular one is, in a word or two (for the messages)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"
