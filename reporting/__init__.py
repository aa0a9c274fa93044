"""The report of a run folder: the masks on the run's images, its curves, what its encoder learned, its probe table,
as PNG pictures and one index.html beside them (report.py)."""
from util.errors import UserError


class ReportError(UserError):
    """A run folder, step log or option the report cannot be drawn from; the message names it and says what to do."""
