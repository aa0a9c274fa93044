"""The step log a run leaves: DeepSpeed's CSV monitor writes one file per logged name (logs/<run.name>/Train_loss.csv:
`step,loss` rows), appended by every start of the run, header included: a header after the first marks a launch
that resumed. A resumed run logs again the steps after its checkpoint; the last row of a step is the one that counts
(the run that went on)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from reporting import ReportError, read_regular

MAX_STEP = 2**63 - 1  # the steps are held as int64


@dataclass(frozen=True)
class Series:
    steps: np.ndarray  # int64, ascending, each once
    values: np.ndarray  # float64
    resumed: tuple[int, ...] = ()  # the first step each launch after the first logged here


class StepLog:
    """{name: Series} of a run's CSV step log; names as the files are named ("Train_loss", "Perf_images_per_s")."""

    def __init__(self, folder: Path, series: dict[str, Series]):
        self.folder, self.series = folder, series

    def get(self, name: str) -> Optional[Series]:
        return self.series.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.series

    @property
    def resumed(self) -> tuple[int, ...]:
        """The first step of each launch after the first, from the loss (logged for every step): found in the log
        itself, so a launch killed without writing summary.json is marked too."""
        loss = self.get("Train_loss")
        return loss.resumed if loss is not None else ()

    @property
    def last_step(self) -> int:
        return max((int(s.steps[-1]) for s in self.series.values() if len(s.steps)), default=0)


def read_step_log(folder: Path) -> StepLog:
    """Every *.csv of `folder` (a run's logs/<run.name>). A row cut short by a killed write (the file's last line,
    with no newline) is left out; any other unreadable row (a step outside 0 to 2^63-1 too) is a ReportError naming
    the file and line, as is a *.csv that is not a regular file (a FIFO is never opened: it would block)."""
    return StepLog(folder, {path.stem: read_series(path) for path in sorted(folder.glob("*.csv"))})


def read_series(path: Path) -> Series:
    text = read_regular(path, "the report needs the run's step log")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    elif lines:
        lines.pop()  # the last row was being written when the run died
    by_step, headers, resumed = {}, 0, []
    for number, line in enumerate(lines, start=1):
        if line.startswith("step,"):  # the header, e.g. "step,loss", written again by every start of the run
            headers += 1
            continue
        try:
            step, value = line.rstrip("\r").split(",")
            step, value = int(step), float(value)
        except ValueError:
            raise ReportError(f"{path}:{number}: {line[:80]!r} is not a 'step,value' row; the step log is damaged: "
                              f"move the file away to draw the report without it") from None
        if not 0 <= step <= MAX_STEP:  # no run reaches it: a damaged row (and beyond the int64 the steps are held in)
            raise ReportError(f"{path}:{number}: {line[:80]!r} has a step outside 0 to 2^63-1; the step log is "
                              f"damaged: move the file away to draw the report without it")
        by_step[step] = value  # a later row of the same step wins
        if headers > 1 and len(resumed) < headers - 1:  # the first row of a launch after the first
            resumed.append(step)
    steps = np.array(sorted(by_step), dtype=np.int64)
    return Series(steps, np.array([by_step[s] for s in steps.tolist()], dtype=np.float64), tuple(resumed))
