"""The per-GPU micro batch and memory: `data.batch_size: auto` finds the largest micro batch that fits, and an
out-of-memory error without it is one line that says what to set.

    batch = settle(t, sched_step, build_state)   # the loop, the launch's first step with data.batch_size auto
    raise TrainingError(out_of_memory_line(t, err))

With auto (optimization.global_batch set), each launch's first step is the trial: every rank agrees after each
forward and each backward of its micro steps whether any rank ran out of memory. If one did, every rank drops its
engine and loader and builds them again from the launch's start (the checkpoint it resumed, the warm start or the
initial weights) with the next smaller micro batch and twice the accumulation: the global batch, the step's samples
and the schedules stay as they were. The micro batch that fitted is in the run plan, hence in every checkpoint's
run.json, where the next launch starts from. docs/training.md, "Global batch and memory".

What cannot be agreed on: a rank that runs out of memory inside its backward pass while the others are already in
DeepSpeed's gradient reduction. The others then wait in that collective; the watchdog stops the run after
run.timeout_s naming the step. The ranks that ran out of memory write `micro_batch.json` into run.out_dir first, and
the next launch's trial starts below that micro batch.
"""
from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch

from config import training_dtype
from training import TrainingError
from training.distributed import any_rank
from training.engine import forward, set_schedules
from training.metrics import peak_memory_gb, total_memory_gb
from training.plan import BatchLayout, RunPlan
from util.files import write_file_atomic

logger = logging.getLogger(__name__)

NOTE = "micro_batch.json"  # run.out_dir: the smallest micro batch a rank of this run ran out of memory with


def is_out_of_memory(err: BaseException) -> bool:
    """A GPU's out-of-memory error, or the CPU allocator's (a run on the CPU, or a process memory limit)."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(err))


def smaller(layout: BatchLayout) -> Optional[BatchLayout]:
    """The layout with the largest micro batch up to half of `layout`'s that splits its per-GPU share; None at 1."""
    share = layout.batch_size * layout.grad_accum
    batch = next((b for b in range(layout.batch_size // 2, 0, -1) if share % b == 0), None)
    return None if batch is None else BatchLayout(batch, share // batch, layout.world_size)


def below_note(plan: RunPlan, out_dir: Path) -> RunPlan:
    """`plan` with a micro batch below the one micro_batch.json in `out_dir` says ran out of memory (a launch whose
    ranks could not agree on it), when the plan's is not below it already."""
    failed = noted_failure(out_dir)
    if failed is None:
        return plan
    layout = plan.layout
    while layout is not None and layout.batch_size >= failed:
        layout = smaller(layout)
    if layout is None or layout == plan.layout:
        return plan
    logger.info(f"data.batch_size auto: {out_dir / NOTE} says a micro batch of {failed} ran out of memory: this "
                f"launch tries {layout.batch_size} x grad_accum {layout.grad_accum}")
    return plan.with_layout(layout)


def settle(t, sched_step: int, build_state):
    """The launch's first optimizer step (`sched_step`: its step in the schedules) with data.batch_size auto: tried,
    and tried again with a smaller micro batch on every rank while any rank runs out of memory. Returns the step's
    last batch; the trainer `t` holds the engine and loader of the micro batch that fitted. `build_state`: the
    loop's (cfg, plan, guard, checkpointer) → (TrainState, step)."""
    while True:
        batch = tried_step(t)
        layout = t.plan.layout
        if batch is not None:
            logger.info(f"data.batch_size auto: a micro batch of {layout.batch_size} per GPU x grad_accum "
                        f"{layout.grad_accum} fits (peak {peak_memory_gb(t.guard.device):.2f} GiB); the run's "
                        f"checkpoints record it")
            return batch
        less = smaller(layout)
        if less is None:
            raise TrainingError(f"data.batch_size auto: step {t.step} runs out of memory even with a micro batch of "
                                f"1 per GPU: set model.activation_checkpointing true, use GPUs with more memory, or "
                                f"a smaller model")
        logger.warning(f"data.batch_size auto: step {t.step} ran out of memory with a micro batch of "
                       f"{layout.batch_size} per GPU; every rank goes on with {less.batch_size} x grad_accum "
                       f"{less.grad_accum} (global batch {less.global_batch} kept), from the launch's start")
        rebuild(t, less, build_state)
        set_schedules(t.engine.optimizer, sched_step, t.cfg, t.plan.schedules)


def tried_step(t):
    """The step's micro steps, every rank agreeing after each forward and backward whether any ran out of memory;
    the step's last batch, or None when one did (nothing of the step is kept then)."""
    dtype, progress = training_dtype(t.cfg), t.progress
    done = []
    for _ in range(t.plan.layout.grad_accum):
        started = time.perf_counter()
        batch = next(t.batches)
        progress.timer.add_wait(time.perf_counter() - started)
        loss = attempt(t, lambda: forward(t.engine, t.ema, t.target, batch, dtype))
        if loss is None or not attempt(t, lambda: backward(t.engine, loss)):
            return None
        t.engine.step()  # an out-of-memory error here (the optimizer step) is the loop's: the weights may be half new
        done.append((batch, loss.detach()))
    for batch, loss in done:  # the step counts once it is whole
        progress.read(t, batch)
        progress.losses.add(t.step, loss)
    progress.timer.add_step(t.plan.layout.batch_size * t.plan.layout.grad_accum)
    return done[-1][0]


def backward(engine, loss: torch.Tensor) -> bool:
    engine.backward(loss)
    return True


def attempt(t, fn):
    """fn() on every rank; its result, or None on every rank when any rank ran out of memory in it (that rank
    writes micro_batch.json first, in case the others never reach the agreement)."""
    failed, result = False, None
    try:
        result = fn()
    except Exception as err:  # only out-of-memory errors are agreed on: any other goes on up
        if not is_out_of_memory(err):
            raise
        failed = True
        note_failure(t.guard.out_dir, t.plan.layout.batch_size)
    (anyone,) = any_rank((failed,), t.guard.device)
    return None if anyone else result


def noted_failure(out_dir: Path) -> Optional[int]:
    """The micro batch micro_batch.json in `out_dir` says ran out of memory; None without a readable one."""
    try:
        return int(json.loads((out_dir / NOTE).read_text())["out_of_memory_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def note_failure(out_dir: Path, batch: int) -> None:
    """Records in run.out_dir that a micro batch of `batch` ran out of memory (the smallest so far is kept)."""
    earlier = noted_failure(out_dir)
    batch = batch if earlier is None else min(batch, earlier)
    write_file_atomic(out_dir / NOTE, json.dumps({"out_of_memory_at": batch}).encode())


def rebuild(t, layout: BatchLayout, build_state) -> None:
    """Every rank: the engine, target, EMA and loader of `t` dropped, their memory freed, and built again for
    `layout` from the launch's start by `build_state` (settle's)."""
    t.ema.wait()
    t.engine.destroy()
    t.engine = t.target = t.ema = t.loader = t.batches = None
    gc.collect()  # the old engine's tensors go now: the objects are referenced by nothing else (checked)
    if t.guard.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(t.guard.device)
    t.plan = t.plan.with_layout(layout)
    state, step = build_state(t.cfg, t.plan, t.guard, t.checkpointer)
    t.engine, t.target, t.ema, t.loader = state.engine, state.target, state.ema, state.loader
    t.batches = iter(t.loader)
    if step != t.step - 1:
        raise TrainingError(f"data.batch_size auto: the rebuilt run stands at step {step}, not {t.step - 1}")


def out_of_memory_line(t) -> str:
    """The one line of an out-of-memory error in step t.step (not the trial's): the micro batch, the peak, and what
    to set; with data.batch_size auto it is noted in run.out_dir, so the next launch (--resume auto) tries less."""
    layout, device, cfg = t.plan.layout, t.guard.device, t.cfg
    half = max(1, layout.batch_size // 2)
    if cfg.optimization.global_batch:
        fix = (f"set data.batch_size {half} (optimization.global_batch {cfg.optimization.global_batch} is kept: "
               f"grad_accum makes up the rest), or data.batch_size auto")
    else:
        fix = (f"set optimization.global_batch {layout.global_batch} with data.batch_size {half} or auto (the "
               f"global batch kept), or halve data.batch_size")
    line = (f"out of memory in step {t.step} with a micro batch of {layout.batch_size} per GPU: peak "
            f"{peak_memory_gb(device):.2f} GiB of the {device.type} device's {total_memory_gb(device):.2f} GiB; {fix}, or set "
            f"model.activation_checkpointing true")
    if cfg.data.batch_size == "auto":
        note_failure(t.guard.out_dir, layout.batch_size)
        line += (f"; data.batch_size auto noted it in {t.guard.out_dir / NOTE}: resume with --resume auto and the "
                 f"next launch tries a smaller micro batch")
    return line
