"""The training loop: the run plan, the guard around the run, then the steps.

    code = fit(cfg, ResumeRequest("auto"), make_probe)     # train.py, on every rank

What a run writes, what it logs, how it stops on a signal or a non-finite loss: docs/training.md.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

import kernels
from config import Config, ConfigError, mask_sampler, training_dtype
from pipeline.loading.loader import Batch, Loader, build_loader
from training import TrainingError, micro_batch, slurm
from training.checkpoints import Checkpointer, TrainState
from training.distributed import any_rank, on_rank0
from training.engine import build_engine, micro_step, set_schedules
from training.guard import Guard, guarded
from training.metrics import count_flops
from training.out_dir import SPACE_MARGIN, check_space
from training.plan import ResumeRequest, RunPlan, plan_run
from training.progress import Progress
from training.target_ema import target_ema
from training.warm_start import init_step

logger = logging.getLogger(__name__)


def fit(cfg: Config, request: ResumeRequest, make_probe: Optional[Callable[[], Callable]] = None) -> int:
    """Trains `cfg` from the checkpoint `request` names until its last step or a stop signal; returns the exit code.
    The run plan comes first, before any process group, signal handler or file is touched, so a refused resume or
    unusable shards cost nothing. `make_probe` builds, on rank 0, the kNN probe logged every logging.probe_every
    steps (a callable (encoder, device) → top-1)."""
    plan = plan_run(cfg, int(os.environ.get("WORLD_SIZE", "1")), request)
    if done := plan.finished():  # every rank returns before any process group exists
        logger.info(done)
        return 0
    with guarded(cfg, plan) as guard:
        return train(Trainer.build(cfg, plan, guard, make_probe))


def build_training_loader(cfg: Config, plan: RunPlan, rank: int, device: torch.device,
                          dtype: torch.dtype | None = None) -> Loader:
    """The loader of `rank` in the run `plan` (its batch layout, steps per epoch, manifest and backend: pipeline/
    receives these values and never reads the config); images in the training dtype unless `dtype` is given."""
    return build_loader(cfg.data, mask_sampler(cfg), seed=cfg.run.seed, rank=rank, layout=plan.layout,
                        steps_per_epoch=plan.steps_per_epoch, manifest=plan.manifest, backend=plan.backend,
                        device=device, dtype=dtype or training_dtype(cfg))


@dataclass
class Trainer(TrainState):
    """What the loop trains (the state a checkpoint holds) and with what: the config, the plan, the guard, the step
    (the last one done), the checkpointer and the progress log. The loop's helpers take it whole."""

    cfg: Config
    plan: RunPlan
    guard: Guard
    checkpointer: Checkpointer
    progress: Progress
    step: int
    requeue: bool = False  # the requeue signal reached a rank (agreed at the check that stops the run)

    batches: Any = None  # the loader's iterator
    trial: bool = False  # the launch's first step tries the micro batch (data.batch_size auto)

    @classmethod
    def build(cls, cfg: Config, plan: RunPlan, guard: Guard, make_probe=None) -> "Trainer":
        """On every rank, once rank 0 holds run.out_dir: the kernels, the engine, the loader and the EMA, and the
        checkpoint the plan resumes restored into them."""
        try:  # decided once, for the whole run (logged)
            kernels.configure(**dataclasses.asdict(cfg.kernels), device=guard.device)
        except ValueError as err:  # e.g. a Triton kernel asked for with run.device auto on a machine without CUDA
            raise ConfigError(f"kernels: {err}") from None
        auto = cfg.data.batch_size == "auto"
        if auto:  # a launch whose ranks ran out of memory without agreeing on it starts below that micro batch
            plan = micro_batch.below_note(plan, guard.out_dir)
        checkpointer = Checkpointer(cfg, guard.out_dir, plan.last_step)
        state, step = build_state(cfg, plan, guard, checkpointer)
        on_rank0(check_space, guard.out_dir, int(checkpointer.next_size(state) * SPACE_MARGIN),
                 "one checkpoint")  # now, rather than after hours of training
        return cls(state.engine, state.target, state.ema, state.loader, cfg, plan, guard, checkpointer,
                   Progress(cfg, plan, guard, step, make_probe), step, trial=auto)


def build_state(cfg: Config, plan: RunPlan, guard: Guard, checkpointer: Checkpointer) -> tuple[TrainState, int]:
    """The engine, target encoder, EMA and loader of `plan` on this rank, with the checkpoint the plan resumes (or
    the warm start) in them; and the step the run goes on from. Called again by data.batch_size auto with another
    layout of the same plan, which gives the same weights and position."""
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    engine, _, target = build_engine(cfg, plan.layout, guard.device, load_universal=plan.elastic,
                                     init=plan.init if plan.saved is None else None)
    loader = build_training_loader(cfg, plan, guard.rank, guard.device)
    ema = target_ema(engine, target)  # after deepspeed.initialize: it reads the optimizer's layout
    state = TrainState(engine, target, ema, loader)
    step = checkpointer.restore(state, plan.saved, plan.layout, plan.elastic)
    if plan.saved is None:  # 0, or where a warm start with checkpoint.init_continue goes on (its epoch's start)
        step = init_step(plan, loader)
    ema.loaded()
    return state, step


def train(t: Trainer) -> int:
    """The steps, on every rank, from the one after t.step to the plan's last; returns the exit code. The host syncs
    only on logging and checkpoint steps; the watchdog hears of every step."""
    shift, layout = t.plan.schedule_shift, t.plan.layout
    logger.info(f"training {t.cfg.run.name}: {t.plan.world_size} rank(s) on {t.guard.device.type}, global batch "
                f"{layout.global_batch}, {t.plan.steps_per_epoch} steps/epoch, steps {t.step + 1}.."
                f"{t.plan.last_step} of {t.plan.schedule_end}"
                + (f" (the schedules run {shift:+d} steps from the count)" if shift else "")
                + f"; {layout.batch_size} per GPU x grad_accum {layout.grad_accum} x {layout.world_size}"
                + (" (data.batch_size auto: the first step tries it)" if t.trial else ""))
    t.batches = iter(t.loader)
    t.guard.watchdog.step_done(t.step)
    try:
        while t.step < t.plan.last_step:
            t.step += 1
            # 1. the schedules of this step, then its micro steps (forward, backward, optimizer step); with
            # data.batch_size auto, the launch's first step finds the micro batch that fits
            sched = set_schedules(t.engine.optimizer, t.step + shift, t.cfg, t.plan.schedules)
            if t.trial:
                batch, t.trial = micro_batch.settle(t, t.step + shift, build_state), False
            else:
                batch = micro_steps(t)
            # 2. the target encoder's EMA: its all-gather runs while the next batch is fetched and the context forward
            t.ema.update(sched["momentum"])
            t.progress.step_done(t, batch)
            # 3. on logging and checkpoint steps: the host sync, the checks every rank agrees on, the log line
            if (t.progress.due(t.step) or t.checkpointer.due(t.step)) and check_in(t, sched, batch):
                return stop_here(t)
            # 4. the checkpoint, when due
            if t.checkpointer.due(t.step):
                save(t)
            t.guard.watchdog.step_done(t.step)
    finally:  # nothing left in flight when the loop ends or raises: gloo aborts a process exiting with a gather
        t.ema.wait()
    t.guard.watchdog.disarm()
    t.progress.finish(t)
    return 0


def micro_steps(t: Trainer) -> Batch:
    """The optimizer step's grad_accum micro steps: each its batch (the wait counted as data time), forward,
    backward and DeepSpeed's step; their losses stay on the device. Returns the last batch."""
    accum, dtype, progress = t.plan.layout.grad_accum, training_dtype(t.cfg), t.progress
    for _ in range(accum):
        started = time.perf_counter()
        batch = next(t.batches)
        progress.timer.add_wait(time.perf_counter() - started)
        progress.read(t, batch)
        step = lambda: progress.losses.add(t.step, micro_step(t.engine, t.ema, t.target, batch, dtype))  # noqa: E731
        try:
            if progress.flops is None:  # counted once, on the first micro step (same work as every other)
                progress.flops = accum * count_flops(step)
            else:
                step()
        except Exception as err:
            if not micro_batch.is_out_of_memory(err):
                raise
            raise TrainingError(micro_batch.out_of_memory_line(t)) from None
    progress.timer.add_step(t.plan.layout.batch_size * accum)
    return batch


def check_in(t: Trainer, sched: dict, batch) -> bool:
    """A logging or checkpoint step, on every rank: waits for the device (a CPU-GPU sync point), stops on a
    non-finite loss, agrees with the other ranks whether any received a stop signal or lost run.out_dir, logs the
    interval. Returns whether the run stops here."""
    if t.guard.device.type == "cuda":
        torch.cuda.synchronize(t.guard.device)
    bad = t.progress.losses.bad_step()
    if bad:
        raise TrainingError(f"non-finite loss at step {bad}; stopped without saving, the last good checkpoint is "
                            f"kept in {t.checkpointer.dir}")
    t.progress.count_skipped(t.loader)  # the last step always logs: summary.json takes the count from here
    stop = t.guard.stop
    stopping, gone, t.requeue, collapsed = any_rank((stop.received is not None, t.guard.out_dir_gone(),
                                                     stop.requeue, t.progress.alarm is not None), t.guard.device)
    if gone:  # before anything writes: the monitors would raise mid-write
        raise TrainingError(t.guard.vanished(t.step))
    if stopping and stop.received is None:  # another rank saw it first: perhaps the end of a launcher both have
        t.guard.watchdog.check_launchers()
    t.progress.log(t, sched, batch)
    if collapsed:  # logging.collapse stop: rank 0's alarm fired (training/collapse.py); the checkpoints before it stay
        save(t, prune_old=False)
        raise TrainingError(t.progress.alarm or "the collapse alarm fired on rank 0 (logging.collapse stop)")
    return stopping


def save(t: Trainer, prune_old: bool = True) -> None:
    t.checkpointer.save(t, t.step, t.plan.record(t.step, t.loader.position()), prune_old)


def stop_here(t: Trainer) -> int:
    """A stop signal reached a rank: checkpoint, then exit 0 (after the requeue signal, the job requeues itself)."""
    save(t)
    t.progress.finish(t, stopped=True)  # the launch's figures into summary.json: the run's next launch adds its own
    stop = t.guard.stop
    stop.ignore_further()
    mixed = " (the requeue signal reached another rank)" if t.requeue and not stop.requeue else ""
    logger.info(f"stopped by {stop.received or 'a signal on another rank'} at step {t.step}{mixed}; resume with "
                f"--resume auto")
    if t.requeue and t.guard.rank == 0:  # the checkpoint is complete: every rank's part is written
        logger.info(slurm.requeue(os.environ))
    return 0
