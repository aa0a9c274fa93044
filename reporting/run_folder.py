"""What a run folder (train.py's run.out_dir) holds for its report: the config it ran with, its summary, its newest
complete checkpoint (or the one of its checkpoints given instead of the folder: checkpoints/best) and that checkpoint's
run record, its step log. Read only; a live run's folder reads as well."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from config import Config, load_config
from reporting import ReportError
from reporting.steplog import StepLog, read_step_log
from training.checkpoints import CheckpointRecord, checkpoint_dir, complete_tags, read_record
from training.integrity import COMPLETE


@dataclass
class RunFolder:
    path: Path
    cfg: Config
    summary: Optional[dict]  # summary.json: the run's launches that ended (at the last step or a signal)
    checkpoint: Optional[Path]  # the newest complete checkpoint's tag folder, or the checkpoint given
    record: Optional[CheckpointRecord]  # its run.json: world size, the backend the run resolved
    log: Optional[StepLog]  # logs/<run.name>/*.csv; None when the run wrote no CSV step log

    @property
    def world_size(self) -> int:
        if self.record is not None:
            return self.record.world_size
        return int(self.summary["world_size"]) if self.summary else 1

    @property
    def backend(self) -> Optional[str]:
        """The data backend the run resolved ("dali" or "torch"), when its checkpoint says."""
        return self.record.identity.get("data.backend (resolved)") if self.record else None


def open_run(path: str | Path) -> RunFolder:
    """The run folder `path`, or the run of the checkpoint folder `path` (e.g. checkpoints/best), whose encoder the
    report then draws instead of the newest. Raises ReportError (config.ConfigError for its config.yaml,
    CheckpointError for a damaged run.json) naming the folder or file and what to do."""
    path, chosen = Path(path), None
    if (path / COMPLETE).is_file():  # a checkpoint: <run.out_dir>/checkpoints/<tag or best>
        if path.parent.name != "checkpoints" or not (path.parent.parent / "config.yaml").is_file():
            raise ReportError(f"{path}: a checkpoint outside a run folder of train.py (no config.yaml in "
                              f"{path.parent.parent}); give its run.out_dir, or a checkpoint inside one")
        path, chosen = path.parent.parent, path
    if not path.is_dir():
        raise ReportError(f"{path}: no such folder; give the run.out_dir of a train.py run")
    if not (path / "config.yaml").is_file():
        raise ReportError(f"{path}: not a run folder of train.py (no config.yaml in it); give the run.out_dir of a "
                          f"train.py run, e.g. runs/demo/train")
    cfg = load_config(path / "config.yaml")
    checkpoint, record = (chosen, read_record(chosen)) if chosen else newest_checkpoint(path)
    logs = path / "logs" / cfg.run.name
    log = read_step_log(logs) if any(logs.glob("*.csv")) else None
    return RunFolder(path, cfg, read_summary(path / "summary.json"), checkpoint, record, log)


def read_summary(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        float(summary["images_per_s_per_gpu"]), int(summary["steps"]), int(summary["world_size"])
        for x in summary.get("launches", []):
            int(x["first_step"]), int(x["last_step"]), int(x["world_size"]), float(x["seconds"])
            float(x["loop_seconds"]), float(x["images_per_s_per_gpu"]), str(x["ended"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ReportError(f"{path}: not a summary written by train.py ({type(err).__name__}: {err}); move it away "
                          f"to draw the report without it") from None
    return summary


def newest_checkpoint(path: Path) -> tuple[Optional[Path], Optional[CheckpointRecord]]:
    tags = complete_tags(checkpoint_dir(path))
    if not tags:
        return None, None
    folder = checkpoint_dir(path) / tags[-1]
    return folder, read_record(folder)
