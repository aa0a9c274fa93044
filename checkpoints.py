"""Where training checkpoints live, which are complete, which to resume, which to prune.

A checkpoint is DeepSpeed's tag folder `<run.out_dir>/checkpoints/step00000050/`; it counts as complete only once the
marker file COMPLETE is written into it, after every rank finished saving. A run killed while saving leaves a folder
without the marker, which `--resume auto` skips and an explicit `--resume PATH` refuses.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Optional

COMPLETE = "COMPLETE"
TAG = re.compile(r"^step(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint that was asked for cannot be used; the message names it."""


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    tags = [p.name for p in ckpt_dir.iterdir() if TAG.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(tags)


def mark_complete(ckpt_dir: Path, tag: str, step: int) -> None:
    (ckpt_dir / tag / COMPLETE).write_text(f"{step}\n")


def prune(ckpt_dir: Path, keep_last: int) -> list[str]:
    """Deletes all but the newest `keep_last` complete checkpoints (never an incomplete newer one's only backup)."""
    tags = complete_tags(ckpt_dir)
    doomed = tags[:-keep_last] if keep_last > 0 else []
    for tag in doomed:
        shutil.rmtree(ckpt_dir / tag)
    return doomed


def resolve_resume(resume: str, out_dir: str | Path) -> Optional[tuple[Path, str]]:
    """'' → None (fresh start); 'auto' → the newest complete checkpoint of this run, or None when there is none;
    a path (a tag folder) → that checkpoint, which must exist and be complete. Returns (load_dir, tag)."""
    if not resume:
        return None
    if resume == "auto":
        ckpt_dir = checkpoint_dir(out_dir)
        tags = complete_tags(ckpt_dir)
        return (ckpt_dir, tags[-1]) if tags else None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist: give a tag folder such as "
                              f"{checkpoint_dir(out_dir) / tag_for(1000)}, or --resume auto")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete (no {COMPLETE} marker: its run died while saving); "
                              f"choose an older one or --resume auto")
    return path.parent, path.name
