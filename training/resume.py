"""Resuming, on the same or another number of GPUs: which checkpoint a resume reads, the batch it trains with, the
checks against the saved run, the conversion to DeepSpeed's universal format when the world size differs, and where
the data and the schedules go on.

    saved = saved_run(resume, out_dir)                      # run.json of the checkpoint, or None (fresh start)
    plan = plan_resume(cfg, saved, world_size, keep_per_gpu_batch)
    cfg = apply_plan(cfg, plan)                              # the batch this run trains with
    ... build the engine (DeepSpeed's load_universal when plan.elastic), the loader, the run identity ...
    step = restore_saved(engine, target, loader, plan, out_dir, identity, accept_changes)

By default the global batch is kept exactly: the per-GPU batch (at most the configured data.batch_size, which is
what fits in memory) and grad_accum are chosen so that batch × grad_accum × GPUs equals the saved global batch; when
no whole split exists the resume is refused, naming the GPU counts that work. With --keep-per-gpu-batch the
configured per-GPU batch is kept, the global batch changes, and the schedules (functions of the step) are laid out
for the new steps per epoch and continue at the same sample of the same epoch. docs/training.md, "Elastic resume".
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch.distributed as dist

from config import Config
from pipeline.loader import saved_position
from pipeline.shards import write_file_atomic
from training.checkpoints import (RUN_FILE, CheckpointError, resolve_resume, restore, set_rng_state,
                                  universal_root)
from training.distributed import on_rank0
from training.run_dir import check_space, folder_bytes
from training.run_identity import differences

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FILE = "SOURCE.json"  # in a converted folder: which checkpoint it was converted from
CONVERSION_SPACE = 2.5  # the universal copy (fp32 masters and moments, module states) plus DeepSpeed's temp files
BATCH_KEYS = ("data.batch_size", "optimization.grad_accum")
SCHEDULE_KEYS = ("global batch size", "schedule: steps per epoch", "schedule: warmup steps", "schedule: total steps")


@dataclass(frozen=True)
class SavedRun:
    """What a checkpoint's run.json says about the run that wrote it."""

    folder: Path  # the tag folder
    step: int
    world_size: int
    identity: dict  # training.run_identity.run_identity
    requested: tuple[int, int]  # (data.batch_size, optimization.grad_accum) its config asked for, before any plan
    schedule_shift: int  # the schedules' step minus the step count (non-zero after --keep-per-gpu-batch rescaled)

    @property
    def global_batch(self) -> int:
        return int(self.identity["global batch size"])


@dataclass(frozen=True)
class ResumePlan:
    saved: Optional[SavedRun]  # None: a fresh start
    batch_size: int  # per GPU, this run
    grad_accum: int
    elastic: bool  # the world size differs: DeepSpeed loads a universal conversion of the checkpoint
    rescaled: bool  # --keep-per-gpu-batch changed the global batch: the schedules follow the new one
    expected: frozenset[str]  # run-identity entries that this plan changes on purpose (logged, not refused)
    notes: tuple[str, ...]  # what it decided, for the log


def saved_run(resume: str, out_dir: Path) -> Optional[SavedRun]:
    """The checkpoint `resume` names ("", "auto" or a tag folder: training.checkpoints.resolve_resume) and its
    run.json; None for a fresh start. Raises CheckpointError naming a damaged run.json."""
    found = resolve_resume(resume, out_dir)
    if found is None:
        return None
    folder = found[0] / found[1]
    path = folder / RUN_FILE
    try:
        meta = json.loads(path.read_text())
        identity = dict(meta["identity"])
        requested = meta.get("requested") or [identity[key] for key in BATCH_KEYS]  # older checkpoints: as trained
        return SavedRun(folder, int(meta["step"]), int(meta["world_size"]), identity,
                        (int(requested[0]), int(requested[1])), int(meta.get("schedule_shift", 0)))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err}); the checkpoint is damaged: "
                              f"choose another one") from None


def split_global_batch(global_batch: int, world_size: int, max_batch: int) -> Optional[tuple[int, int]]:
    """(per-GPU batch ≤ max_batch, grad_accum) with batch × grad_accum × world_size == global_batch and the fewest
    accumulation steps (the largest batch that fits: on the run's own world size, its own split); None when
    world_size does not divide the global batch."""
    if global_batch % world_size:
        return None
    per_gpu = global_batch // world_size
    return next((per_gpu // a, a) for a in range(1, per_gpu + 1) if per_gpu % a == 0 and per_gpu // a <= max_batch)


def plan_resume(cfg: Config, saved: Optional[SavedRun], world_size: int, keep_per_gpu_batch: bool) -> ResumePlan:
    """The batch this run trains with and what differs on purpose from the saved run (module docstring)."""
    batch, accum = cfg.data.batch_size, cfg.optimization.grad_accum
    if saved is None:
        return ResumePlan(None, batch, accum, False, False, frozenset(), ())
    elastic = world_size != saved.world_size
    expected, notes = set(), []
    if elastic:
        expected.add("world size")
        notes.append(f"elastic resume: checkpoint {saved.folder} was written by {saved.world_size} rank(s), this run "
                     f"has {world_size}; DeepSpeed's universal checkpoint re-partitions the fp32 weights and AdamW "
                     f"moments")
    if (batch, accum) != saved.requested:  # the config asks for another batch: a change like any other
        return ResumePlan(saved, batch, accum, elastic, False, frozenset(expected), tuple(notes))
    then = saved.identity
    if not keep_per_gpu_batch:
        split = split_global_batch(saved.global_batch, world_size, batch)
        if split is None:
            raise CheckpointError(no_split_message(saved, world_size, batch * accum))
        batch, accum = split
    if (batch, accum) != tuple(then[key] for key in BATCH_KEYS):
        expected.update(BATCH_KEYS)
    now_global = batch * accum * world_size
    rescaled = now_global != saved.global_batch
    if rescaled:
        expected.update(SCHEDULE_KEYS)
        notes.append(f"batch: per-GPU batch {batch} kept (--keep-per-gpu-batch): global batch {saved.global_batch} → "
                     f"{now_global}; the schedules are laid out for the new steps per epoch and go on from the same "
                     f"sample of the same epoch (the learning rates are not scaled with the batch)")
    elif (batch, accum, world_size) != (then["data.batch_size"], then["optimization.grad_accum"], saved.world_size):
        notes.append(f"batch: global batch {now_global} kept = {batch} per GPU × grad_accum {accum} × {world_size} "
                     f"GPU(s) (was {then['data.batch_size']} × {then['optimization.grad_accum']} × "
                     f"{saved.world_size})")
    return ResumePlan(saved, batch, accum, elastic, rescaled, frozenset(expected), tuple(notes))


def no_split_message(saved: SavedRun, world_size: int, per_gpu: int) -> str:
    """`per_gpu`: the configured batch × grad_accum, what --keep-per-gpu-batch would keep."""
    g = saved.global_batch
    fits = [str(n) for n in range(1, g + 1) if g % n == 0]
    counts = f"{', '.join(fits[:-1])} or {fits[-1]}" if len(fits) > 1 else fits[0]
    return (f"checkpoint {saved.folder} trained with a global batch of {g}; {world_size} GPUs cannot split it "
            f"exactly (per-GPU batch × grad_accum × {world_size} = {g} has no whole solution). Resume on "
            f"{counts} GPU(s) to keep it, or pass --keep-per-gpu-batch to train on with "
            f"{per_gpu} samples per GPU and step (global batch {per_gpu * world_size}, schedules rescaled)")


def apply_plan(cfg: Config, plan: ResumePlan) -> Config:
    """`cfg` with the plan's per-GPU batch and grad_accum."""
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, batch_size=plan.batch_size),
        optimization=dataclasses.replace(cfg.optimization, grad_accum=plan.grad_accum))


# ------------------------------------------------------------------------------------------------ loading

def check_resume(saved: SavedRun, identity: dict, accept_changes: bool, expected: frozenset[str]) -> None:
    """Refuses (unless `accept_changes`) a checkpoint written by a run whose data, batch or schedule differ from
    this one's, naming every difference; the `expected` ones (the plan's) are logged instead."""
    changes = differences(saved.identity, identity)
    meant = [text for name, text in changes.items() if name in expected]
    others = [text for name, text in changes.items() if name not in expected]
    if others and not accept_changes:
        raise CheckpointError(f"checkpoint {saved.folder} was written by a run with other settings: "
                              f"{'; '.join(others)}. Resume with the same settings, or pass --accept-changes if the "
                              f"change is meant")
    for change in meant:
        logger.info("resuming with a planned change: %s", change)
    for change in others:
        logger.warning("resuming with a change (--accept-changes): %s", change)


def restore_saved(engine, target, loader, plan: ResumePlan, out_dir: Path, identity: dict,
                  accept_changes: bool) -> tuple[int, int]:
    """Restores what `plan.saved` holds into the engine, the target encoder and the loader; returns (the step the
    run goes on from, 0 for a fresh start; the schedule shift: the schedules run at step + shift). A checkpoint of
    another world size is converted first (rank 0); a loader of another layout continues where the saved ranks
    stopped (pipeline.loader.Loader.continue_from). When the global batch changed (--keep-per-gpu-batch) the step
    count goes on (checkpoint tags and logs stay monotonic) while the schedules go on from the place in the epoch
    the saved run had reached, counted in steps of the new global batch."""
    saved = plan.saved
    if saved is None:
        logger.info("starting fresh (no checkpoint to resume)")
        return 0, 0
    check_resume(saved, identity, accept_changes, plan.expected)
    if plan.elastic:
        on_rank0(converted, saved, out_dir)
        client = restore(engine, target, universal_root(out_dir), saved.folder.name)
    else:
        client = restore(engine, target, saved.folder.parent, saved.folder.name)
    step, shift, rank = client["step"], saved.schedule_shift, dist.get_rank()
    then = (saved.world_size, saved.identity["data.batch_size"], saved.identity["optimization.grad_accum"])
    if then == (dist.get_world_size(), loader.batch_size, loader.grad_accum):
        loader.load_state_dict(client["loader"][rank])
        set_rng_state(client["rng"][rank])
    else:
        logger.info(loader.continue_from(client["loader"], saved.world_size, then[1], step))
        set_rng_state(client["rng"][rank % len(client["rng"])])  # the old ranks' states, round robin
        if plan.rescaled:  # the same place in the epoch, counted in steps of the new global batch
            epoch, done = saved_position(client["loader"], saved.world_size, then[1])
            shift = epoch * loader.steps_per_epoch + done // loader.global_batch - step
            logger.info(f"schedules: step {step} was sample {done:,} of epoch {epoch}; with the global batch of "
                        f"{loader.global_batch} ({loader.steps_per_epoch} steps per epoch) the schedules go on from "
                        f"their step {step + shift} (shift {shift:+d}; the step count goes on from {step})")
    logger.info("resumed from %s at step %d", saved.folder, step)
    return step, shift


# ------------------------------------------------------------------------------------------------ the conversion

def converted(saved: SavedRun, out_dir: Path) -> Path:
    """Rank 0: the universal conversion of `saved` in this run's out_dir (made now, or kept from an earlier attempt
    at this resume); every other rank waits. DeepSpeed's converter runs in a process of its own (training.universal).
    Raises CheckpointError when it fails or the disk is too full."""
    dest = universal_root(out_dir) / saved.folder.name
    source = {"source": str(saved.folder.resolve()), "step": saved.step, "world_size": saved.world_size}
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
                              f"on {saved.world_size} rank(s), or choose another checkpoint")
    write_file_atomic(dest / SOURCE_FILE, json.dumps(source).encode())
    logger.info("universal checkpoint %s: converted from %s in %.1f s (%.2f GB)", dest, saved.folder,
                time.perf_counter() - started, folder_bytes(dest) / 1e9)
    return dest
