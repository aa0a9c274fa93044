"""Resuming a checkpoint that the run plan (training/plan.py) chose and checked: DeepSpeed's states, the target encoder,
the data position and the RNG states restored, through DeepSpeed's universal conversion when the world size differs.

    plan = plan_run(cfg, world_size, request)       # the batch, the schedules, the checks against run.json
    ... build the engine (DeepSpeed's load_universal when plan.elastic), the loader ...
    step = restore_saved(engine, target, loader, plan, out_dir)

docs/training.md, "Elastic resume".
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch.distributed as dist

from model.official import CheckpointError
from training.checkpoints import restore, set_rng_state, universal_root
from training.distributed import on_rank0
from training.plan import RunPlan, SavedRun
from training.run_dir import check_space, folder_bytes
from util.files import write_file_atomic

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FILE = "SOURCE.json"  # in a converted folder: which checkpoint it was converted from
CONVERSION_SPACE = 2.5  # the universal copy (fp32 masters and moments, module states) plus DeepSpeed's temp files


def restore_saved(engine, target, loader, plan: RunPlan, out_dir: Path) -> int:
    """Restores what `plan.saved` holds into the engine, the target encoder and the loader; returns the step the run
    goes on from (0 for a fresh start). A checkpoint of another world size is converted first (rank 0); a loader of
    another layout continues where the saved ranks stopped (pipeline.loader.Loader.continue_from). When the global
    batch changed (--keep-per-gpu-batch) the step count goes on (checkpoint tags and logs stay monotonic) while the
    schedules go on at the plan's shift."""
    saved = plan.saved
    if saved is None:
        logger.info("starting fresh (no checkpoint to resume)")
        return 0
    if plan.elastic:
        on_rank0(converted, saved, out_dir)
        client = restore(engine, target, universal_root(out_dir), saved.folder.name)
    else:
        client = restore(engine, target, saved.folder.parent, saved.folder.name)
    step, rank, then = client["step"], dist.get_rank(), saved.record
    trained = (then.world_size, then.identity["data.batch_size"], then.identity["optimization.grad_accum"])
    if trained == (plan.world_size, plan.layout.batch_size, plan.layout.grad_accum):
        loader.load_state_dict(client["loader"][rank])
        set_rng_state(client["rng"][rank])
    else:
        logger.info(loader.continue_from(client["loader"], then.world_size, trained[1], step))
        set_rng_state(client["rng"][rank % len(client["rng"])])  # the old ranks' states, round robin
    logger.info("resumed from %s at step %d", saved.folder, step)
    return step


# ------------------------------------------------------------------------------------------------ the conversion

def converted(saved: SavedRun, out_dir: Path) -> Path:
    """Rank 0: the universal conversion of `saved` in this run's out_dir (made now, or kept from an earlier attempt
    at this resume); every other rank waits. DeepSpeed's converter runs in a process of its own (training.universal).
    Raises CheckpointError when it fails or the disk is too full."""
    dest = universal_root(out_dir) / saved.folder.name
    source = {"source": str(saved.folder.resolve()), "step": saved.record.step,
              "world_size": saved.record.world_size}
    try:
        if json.loads((dest / SOURCE_FILE).read_text()) == source:
            logger.info("universal checkpoint %s: kept from an earlier attempt at this resume", dest)
            return dest
    except (OSError, ValueError):
        pass
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    check_space(dest.parent, int(folder_bytes(saved.folder) * CONVERSION_SPACE),
                f"the universal conversion of {saved.folder}")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "training.universal", str(saved.folder), str(dest)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(dest, ignore_errors=True)
        said = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise CheckpointError(f"checkpoint {saved.folder}: DeepSpeed's universal conversion failed ({said}); resume "
                              f"on {saved.record.world_size} rank(s), or choose another checkpoint")
    write_file_atomic(dest / SOURCE_FILE, json.dumps(source).encode())
    logger.info("universal checkpoint %s: converted from %s in %.1f s (%.2f GB)", dest, saved.folder,
                time.perf_counter() - started, folder_bytes(dest) / 1e9)
    return dest
