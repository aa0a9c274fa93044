"""checkpoint.keep_best: the checkpoint of the best in-training kNN probe, kept as `<run.out_dir>/checkpoints/best`
beside the tag folders. docs/training.md, "The best checkpoint".

    offer_best(folder, step, top1)     # rank 0, once the save of `step` (probed at top1) is complete
    settle_best(ckpt_dir)              # rank 0 at a run's start: what a run that died while replacing it left

`best` holds hard links to the files of the tag folder it was (a copy where links fail), COMPLETE marker included, so
it verifies as that checkpoint did; its step is in its run.json and its marker, its probe in checkpoints/best.json.
Its name matches no tag, so keep_last never prunes it and `--resume auto` never takes it; eval.py, export.py,
report.py and `--resume PATH` take it as any checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from training.integrity import COMPLETE, read_marker
from util.files import fsync_tree, write_file_atomic

logger = logging.getLogger(__name__)

BEST = "best"  # the best checkpoint's folder under checkpoints/
BEST_RECORD = "best.json"  # beside it: {"step", "knn_top1", "tag"}, written once the folder is in place
BEST_STAGING, BEST_OLD = ".best-partial", ".best-old"  # the new best being linked; the one it replaces


def settle_best(ckpt_dir: Path) -> None:
    """A run that died while replacing checkpoints/best: the new one's unfinished links are removed, and the one it
    replaced is put back when the new one never took its place."""
    shutil.rmtree(ckpt_dir / BEST_STAGING, ignore_errors=True)
    old, best = ckpt_dir / BEST_OLD, ckpt_dir / BEST
    if old.is_dir() and not best.exists():
        old.rename(best)
        logger.warning("put back %s: the run died while replacing it", best)
    shutil.rmtree(old, ignore_errors=True)


def read_best(ckpt_dir: Path) -> Optional[dict]:
    """checkpoints/best.json ({"step", "knn_top1", "tag"}) when it describes the checkpoints/best in place (its step
    is best's); None when there is no best, or (logged) when the two disagree: a run died between them."""
    best, path = ckpt_dir / BEST, ckpt_dir / BEST_RECORD
    if not (best / COMPLETE).is_file():
        return None
    try:
        record, (step, _) = json.loads(path.read_text()), read_marker(best)
        if int(record["step"]) == step:
            return {"step": step, "knn_top1": float(record["knn_top1"]), "tag": str(record["tag"])}
        problem = f"it says step {record['step']}, the folder's {COMPLETE} step {step}"
    except (OSError, ValueError, KeyError, TypeError) as err:
        problem = f"{type(err).__name__}: {err}"
    logger.warning("%s does not describe %s (%s): the next probed save replaces it", path, best, problem)
    return None


def offer_best(folder: Path, step: int, top1: float) -> None:
    """Rank 0, once tag folder `folder` (of `step`, probed at `top1`) is complete: it becomes checkpoints/best when
    its probe beats the best's (a tie keeps the earlier). Its files are linked into a staging folder that then takes
    the old best's place by renames; best.json is written last. A failure is logged and leaves the old best in
    place: the run's own checkpoint is complete either way."""
    ckpt_dir = folder.parent
    best = read_best(ckpt_dir)
    if best is not None and best["knn_top1"] >= top1:
        return
    try:
        settle_best(ckpt_dir)
        shutil.copytree(folder, ckpt_dir / BEST_STAGING, copy_function=link_or_copy)
        fsync_tree(ckpt_dir / BEST_STAGING)
        if (ckpt_dir / BEST).exists():
            (ckpt_dir / BEST).rename(ckpt_dir / BEST_OLD)
        (ckpt_dir / BEST_STAGING).rename(ckpt_dir / BEST)
        write_file_atomic(ckpt_dir / BEST_RECORD, json.dumps({"step": step, "knn_top1": top1, "tag": folder.name},
                                                             indent=1).encode())
        shutil.rmtree(ckpt_dir / BEST_OLD, ignore_errors=True)
    except OSError as err:
        settle_best(ckpt_dir)
        logger.warning("could not keep %s as %s (%s); the previous best is kept", folder, ckpt_dir / BEST,
                       err.strerror or err)
        return
    was = f"; the previous best, step {best['step']}, had {100 * best['knn_top1']:.1f}%" if best else ""
    logger.info("kept %s as %s: kNN top-1 %.1f%%%s", folder.name, ckpt_dir / BEST, 100 * top1, was)


def link_or_copy(src: str, dst: str) -> None:
    """A checkpoint's files are never written again once complete: a hard link shares them at no cost in room."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copy2(src, dst)
