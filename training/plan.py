"""The run plan: every value of a run that follows from the config, the shards' manifest, the world size and the
checkpoint it resumes, computed once (plan_run) and read by everything downstream. The config itself is never
changed: where a resume trains with another per-GPU batch, the plan's `layout` says so.

    plan = plan_run(cfg, world_size, ResumeRequest(resume="auto"))   # reads the manifest and run.json, once
    plan.layout.global_batch, plan.steps_per_epoch, plan.schedules, plan.schedule_shift, plan.backend ...

A resume must share the data, the batch and the schedule of the run that wrote its checkpoint: run.json records
that run's identity (`resume_identity`), and plan_run refuses every difference by name, before anything is built,
unless told the change is meant (`--accept-changes`). On another number of GPUs the global batch is kept: the per-GPU
batch (at most the configured data.batch_size, which is what fits in memory) and grad_accum are re-chosen so that
batch × grad_accum × GPUs equals the saved global batch; when no whole split exists the resume is refused, naming
the GPU counts that work. With --keep-per-gpu-batch the configured per-GPU batch is kept, the global batch changes,
and the schedules (functions of the step) are laid out for the new steps per epoch and continue at the same sample of
the same epoch. docs/training.md, "Elastic resume".
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from config import Config, ConfigError
from model.safe_load import CheckpointError
from pipeline import DataError
from pipeline.loading.loader import resolve_backend
from pipeline.remote.fetch import RetryPolicy
from pipeline.shards.manifest import Manifest, read_manifest
from training.checkpoints import Checkpoint, CheckpointRecord, checkpoint_dir, complete_tags, find_checkpoint
from training.out_dir import check_out_dir
from training.schedules import Schedules
from training.warm_start import plan_init
from util.urls import redact_tree

logger = logging.getLogger(__name__)

# Per section: the keys whose change alters the samples, the batch, the objective or the schedule (None = all keys).
# Settings that do not change what is computed (workers, prefetch, logging, checkpoint cadence, max_steps, kernels,
# compile) are not in the identity.
IDENTITY_KEYS = {
    "run": ("seed",),
    "data": ("batch_size", "crop_size", "crop_scale", "crop_ratio", "shuffle_buffer"),
    "mask": None,
    "model": ("arch", "patch_size", "embed_dim", "depth", "num_heads", "pred_depth", "pred_emb_dim",
              "pred_num_heads"),
    "optimization": ("epochs", "warmup_epochs", "ipe_scale", "start_lr", "lr", "final_lr", "weight_decay",
                     "final_weight_decay", "betas", "eps", "grad_accum", "precision"),
    "ema": ("momentum",),
}
BATCH_KEYS = ("data.batch_size", "optimization.grad_accum")
SCHEDULE_KEYS = ("global batch size", "schedule: steps per epoch", "schedule: warmup steps", "schedule: total steps")


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step is cut: `batch_size` samples per rank and micro step, `grad_accum` micro steps per
    optimizer step, `world_size` data-parallel ranks. The one place the global batch and the steps per epoch are
    computed."""

    batch_size: int
    grad_accum: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def steps_per_epoch(self, num_samples: int, shards: str) -> int:
        """Optimizer steps in an epoch of `num_samples` (the last partial global batch is dropped); a DataError
        naming the `shards` folder when there is not one."""
        steps = num_samples // self.global_batch
        if steps < 1:
            raise DataError(f"data.shards {shards}: {num_samples} samples make no full global batch of "
                            f"{self.global_batch} (data.batch_size {self.batch_size} x optimization.grad_accum "
                            f"{self.grad_accum} x {self.world_size} ranks): use more data or a smaller "
                            f"data.batch_size")
        return steps


@dataclass(frozen=True)
class ResumeRequest:
    """What the command line asks of a resume: `resume` is "" (fresh), "auto" or a checkpoint folder;
    `accept_changes` resumes although the data, batch or schedule differ; `keep_per_gpu_batch` keeps
    data.batch_size on another world size (the global batch changes, the schedules are rescaled)."""

    resume: str = ""
    accept_changes: bool = False
    keep_per_gpu_batch: bool = False


@dataclass(frozen=True)
class RunPlan:
    """Every run value, computed once by plan_run."""

    layout: BatchLayout  # the per-GPU batch, grad_accum and world size this run trains with
    requested: tuple[int, int]  # (data.batch_size, optimization.grad_accum) as the config asks
    backend: str  # data.backend resolved: "dali" or "torch"
    manifest: Manifest  # data.shards' manifest, read once
    steps_per_epoch: int  # optimizer steps
    schedules: Schedules  # warmup, lr/wd length T_max, momentum denominator, train steps (training/schedules.py)
    schedule_shift: int  # the schedules run at step + shift (non-zero once --keep-per-gpu-batch rescaled them)
    last_step: int  # the step this run ends at: epochs x steps per epoch (less the shift) or optimization.max_steps
    identity: dict[str, Any]  # what a resume of this run's checkpoints must keep
    saved: Optional[Checkpoint] = None  # the checkpoint this run goes on from; None: a fresh start
    elastic: bool = False  # the world size differs from the checkpoint's: DeepSpeed loads a universal conversion
    rescaled: bool = False  # --keep-per-gpu-batch changed the global batch
    notes: tuple[str, ...] = ()  # what the plan decided (plan_run logs them)
    run_id: str = ""  # the run's id across its launches: the resumed checkpoint's, or a new one (the W&B run id)
    init: Optional[dict] = None  # the warm start a fresh run loads (training/warm_start.py), None: none

    @property
    def world_size(self) -> int:
        return self.layout.world_size

    def as_comments(self) -> str:
        """The plan's values as YAML comments (config.yaml, beside the config they follow from)."""
        layout, sched = self.layout, self.schedules
        lines = [f"world_size: {layout.world_size}", f"global_batch_size: {layout.global_batch} = {layout.batch_size} "
                 f"per GPU x grad_accum {layout.grad_accum} x {layout.world_size}",
                 f"data: {self.manifest.total_samples} samples, {self.backend} backend, {self.steps_per_epoch} steps "
                 f"per epoch", f"schedules: {sched.warmup_steps} warmup, lr and wd over {sched.t_max} steps, momentum "
                 f"over {sched.momentum_denominator}, {sched.train_steps} training steps"
                 + (f", shifted {self.schedule_shift:+d}" if self.schedule_shift else "")]
        return "".join(f"# plan: {line}\n" for line in lines)

    @property
    def schedule_end(self) -> int:
        """The official loop's last step (epochs x steps per epoch), in the step count."""
        return self.schedules.train_steps - self.schedule_shift

    def with_layout(self, layout: BatchLayout) -> "RunPlan":
        """This plan with another split of the same global batch (data.batch_size auto: training/micro_batch.py)."""
        assert layout.global_batch == self.layout.global_batch and layout.world_size == self.layout.world_size
        identity = {**self.identity, "data.batch_size": layout.batch_size, "optimization.grad_accum": layout.grad_accum}
        return dataclasses.replace(self, layout=layout, identity=identity)

    def finished(self) -> Optional[str]:
        """The line saying there is nothing to train when the checkpoint resumed is at the plan's last step already;
        None otherwise."""
        step = 0 if self.saved is None else self.saved.record.step
        if step < self.last_step:
            return None
        end = self.schedule_end
        if self.last_step < end:
            return (f"nothing to do: the run is at step {step} and optimization.max_steps is {self.last_step} (the "
                    f"schedule has {end}); raise optimization.max_steps to train on")
        return (f"nothing to do: the run is at step {step} of {end}, its schedule's last; evaluate its newest "
                f"checkpoint, or train longer in another run.out_dir")

    def record(self, step: int, position: tuple[int, int]) -> CheckpointRecord:
        """The run.json of this run's checkpoint at `step`, when the loader stands at `position`."""
        return CheckpointRecord(step, self.world_size, self.identity, self.requested, self.schedule_shift, position,
                                self.run_id, self.init)


def plan_run(cfg: Config, world_size: int, request: ResumeRequest = ResumeRequest()) -> RunPlan:
    """The plan of `cfg` on `world_size` ranks; reads data.shards' manifest and the run.json of the checkpoint
    `request.resume` names. Raises DataError (the shards), CheckpointError (the checkpoint, or a resume refused:
    other settings, a world size that cannot split the global batch)."""
    saved = saved_checkpoint(request.resume, Path(cfg.run.out_dir))
    manifest = read_manifest(cfg.data.shards, fetch=RetryPolicy(cfg.data.fetch_timeout_s), key="data.shards")
    if cfg.logging.probe_every:  # read on rank 0 after the model is built: a typo would cost the whole set-up
        read_manifest(cfg.logging.probe_shards, key="logging.probe_shards")
    requested = (cfg.data.batch_size, cfg.optimization.grad_accum)
    layout, elastic, rescaled, expected, notes = resume_layout(cfg, saved, world_size, request.keep_per_gpu_batch)
    steps_per_epoch = layout.steps_per_epoch(manifest.total_samples, cfg.data.shards)
    schedules = schedule_steps(cfg.optimization, steps_per_epoch)
    shift = 0 if saved is None else saved.record.schedule_shift
    if rescaled:  # the same place in the epoch, counted in steps of the new global batch
        epoch, done = saved.record.position
        shift = epoch * steps_per_epoch + done // layout.global_batch - saved.record.step
        notes += (f"schedules: step {saved.record.step} was sample {done:,} of epoch {epoch}; with the global batch "
                  f"of {layout.global_batch} ({steps_per_epoch} steps per epoch) the schedules go on from their step "
                  f"{saved.record.step + shift} (shift {shift:+d}; the step count goes on from {saved.record.step})",)
    backend = resolve_backend(cfg.data.backend)
    identity = resume_identity(cfg, layout, backend, manifest, steps_per_epoch, schedules.warmup_steps,
                               schedules.t_max)
    for note in notes:
        logger.info(note)
    if saved is not None:
        check_resume(saved, identity, request.accept_changes, expected)
    elif not request.resume:
        logger.info("starting fresh in %s (no --resume)", cfg.run.out_dir)
    last = last_step(schedules.train_steps - shift, cfg.optimization)
    run_id = saved.record.run_id if saved is not None and saved.record.run_id else new_run_id()
    init = plan_init(cfg, saved) if saved is None else saved.record.init
    return RunPlan(layout, requested, backend, manifest, steps_per_epoch, schedules, shift, last, identity, saved,
                   elastic, rescaled, notes, run_id, init)


def new_run_id() -> str:
    """A new run's id: 12 random lowercase letters and digits (what W&B takes as a run id). Every rank draws one;
    rank 0's is the one used and recorded."""
    return secrets.token_hex(6)


def preview(cfg: Config, world_size: int) -> list[str]:
    """What a fresh run of `cfg` on `world_size` ranks would train, for --print-config: the batch layout and, when
    data.shards can be read, the samples, steps per epoch, warmup and total steps (else why they are not known).
    Raises ConfigError when the ranks cannot split optimization.global_batch."""
    layout = fresh_layout(cfg, world_size)
    how = ("optimization.global_batch, split by the plan" if cfg.optimization.global_batch else
           "data.batch_size x optimization.grad_accum x ranks")
    lines = [f"global_batch_size: {layout.global_batch} = {layout.batch_size} per GPU x grad_accum "
             f"{layout.grad_accum} x {world_size} GPU(s) ({how}; the GPUs: --world-size, or WORLD_SIZE as the "
             f"launchers set it)"]
    if cfg.data.batch_size == "auto":
        lines.append(f"micro_batch: auto: the first step tries {layout.batch_size} per GPU and halves it on every "
                     f"rank until it fits (the accumulation makes up the rest)")
    try:
        manifest = read_manifest(cfg.data.shards, fetch=RetryPolicy(min(cfg.data.fetch_timeout_s, 30)),
                                 key="data.shards")
        steps_per_epoch = layout.steps_per_epoch(manifest.total_samples, cfg.data.shards)
        sched = schedule_steps(cfg.optimization, steps_per_epoch)
    except (DataError, ConfigError) as err:
        return lines + [f"steps: not known until data.shards can be read ({err})"]
    last = last_step(sched.train_steps, cfg.optimization)
    return lines + [f"data: {manifest.total_samples:,} samples in {len(manifest.shards)} shard(s)",
                    f"steps_per_epoch: {steps_per_epoch}", f"warmup_steps: {sched.warmup_steps}",
                    f"total_steps: {sched.train_steps} ({cfg.optimization.epochs} epochs)"
                    + (f"; this run stops at {last} (optimization.max_steps)" if last < sched.train_steps else "")]


def last_step(schedule_end: int, opt) -> int:
    """The step a run ends at: the schedule's end, or optimization.max_steps (of `opt`) when it comes first."""
    return min(schedule_end, opt.max_steps or schedule_end)


def schedule_steps(opt, steps_per_epoch: int) -> Schedules:
    """The lengths of the lr, weight-decay and momentum schedules of the optimization section `opt`, and the steps
    the run trains, by the official arithmetic (training/schedules.py)."""
    schedules = Schedules.official(opt.epochs, opt.warmup_epochs, opt.ipe_scale, steps_per_epoch)
    if schedules.t_max < 1:  # the weight decay divides by it
        raise ConfigError(f"optimization.ipe_scale {opt.ipe_scale} x optimization.epochs {opt.epochs} x "
                          f"{steps_per_epoch} iterations per epoch gives {schedules.t_max} schedule steps; raise "
                          f"optimization.ipe_scale or epochs")
    return schedules


def saved_checkpoint(resume: str, out_dir: Path) -> Optional[Checkpoint]:
    """The checkpoint `resume` names ("", "auto" or a tag folder: training.checkpoints.find_checkpoint); None for a
    fresh start. Raises CheckpointError when a fresh start would write over the checkpoints of a run already in
    out_dir; TrainingError when out_dir cannot hold a run or a live run holds it."""
    check_out_dir(out_dir)
    if not resume and (tags := complete_tags(checkpoint_dir(out_dir))):
        raise CheckpointError(f"run.out_dir {out_dir} holds the checkpoints of a run ({len(tags)}, the newest "
                              f"{checkpoint_dir(out_dir) / tags[-1]}); a fresh run would write over them: resume "
                              f"it with --resume auto, or give this run another run.out_dir")
    return find_checkpoint(resume, out_dir)


def resume_identity(cfg: Config, layout: BatchLayout, backend: str, manifest: Manifest, steps_per_epoch: int,
                    warmup: int, total: int) -> dict:
    """A flat {name: plain value} of everything a resume must keep (lists for pairs, so it survives JSON); the batch
    keys are the ones this run trains with."""
    out = {}
    for section, keys in IDENTITY_KEYS.items():
        values = dataclasses.asdict(getattr(cfg, section))
        for key in keys or values:
            value = values[key]
            out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    out.update({
        "data.batch_size": layout.batch_size,
        "optimization.grad_accum": layout.grad_accum,
        "data.backend (resolved)": backend,
        "data.shards (the manifest's plan digest)": manifest.plan_sha256,
        "data: samples in the shards": manifest.total_samples,
        "world size": layout.world_size,
        "global batch size": layout.global_batch,
        "schedule: steps per epoch": steps_per_epoch,
        "schedule: warmup steps": warmup,
        "schedule: total steps": total,
    })
    return out


def identity_changes(saved: dict, current: dict) -> dict[str, str]:
    """{name: 'name: saved → current'} for every entry that differs (an entry only one side has counts as a
    difference), in the saved identity's order. Compared redacted, as run.json holds them: a URL saved as
    http://me:***@host/ is the same URL with its password."""
    out = {}
    for name in [*saved, *(k for k in current if k not in saved)]:
        old, new = (redact_tree(side.get(name, "(absent)")) for side in (saved, current))
        if old != new:
            out[name] = f"{name}: {old} → {new}"
    return out


def check_resume(saved: Checkpoint, identity: dict, accept_changes: bool, expected: frozenset[str]) -> None:
    """Refuses (unless `accept_changes`) a checkpoint written by a run whose data, batch or schedule differ from
    this one's, naming every difference; the `expected` ones (the plan's) are logged instead."""
    changes = identity_changes(saved.record.identity, identity)
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


# ------------------------------------------------------------------------------------------------ the batch

def split_global_batch(global_batch: int, world_size: int, max_batch: int) -> Optional[tuple[int, int]]:
    """(per-GPU batch ≤ max_batch, grad_accum) with batch × grad_accum × world_size == global_batch and the fewest
    accumulation steps (the largest batch that fits: on the run's own world size, its own split); None when
    world_size does not divide the global batch."""
    if global_batch % world_size:
        return None
    per_gpu = global_batch // world_size
    return next((per_gpu // a, a) for a in range(1, per_gpu + 1) if per_gpu % a == 0 and per_gpu // a <= max_batch)


def resume_layout(cfg: Config, saved: Optional[Checkpoint], world_size: int, keep_per_gpu_batch: bool):
    """(the layout this run trains with, elastic, rescaled, the identity entries it changes on purpose, notes for the
    log) for the config's batch keys resuming `saved`, or starting fresh when it is None (module docstring)."""
    batch, accum, wanted = cfg.data.batch_size, cfg.optimization.grad_accum, cfg.optimization.global_batch
    if wanted and keep_per_gpu_batch:
        raise ConfigError(f"--keep-per-gpu-batch lets the global batch change, optimization.global_batch "
                          f"{wanted} keeps it: drop one of them")
    if saved is None:
        return fresh_layout(cfg, world_size), False, False, frozenset(), ()
    then = saved.record
    elastic = world_size != then.world_size
    expected, notes = set(), []
    if elastic:
        expected.add("world size")
        notes.append(f"elastic resume: checkpoint {saved.folder} was written by {then.world_size} rank(s), this run "
                     f"has {world_size}; DeepSpeed's universal checkpoint re-partitions the fp32 weights and AdamW "
                     f"moments")
    if wanted:  # the recipe's global batch: the split is the plan's (a change of it, the identity's to refuse)
        most = then.trained_batch[0] if batch == "auto" else batch  # auto: what fitted before is the start
        batch, accum = recipe_split(wanted, world_size, most)
        expected.update(BATCH_KEYS)
    elif (batch, accum) != then.requested:  # the config asks for another batch: a change like any other
        return BatchLayout(batch, accum, world_size), elastic, False, frozenset(expected), tuple(notes)
    elif not keep_per_gpu_batch:
        split = split_global_batch(then.trained_global_batch, world_size, batch)
        if split is None:
            raise CheckpointError(no_split_message(saved, world_size, batch * accum))
        batch, accum = split
    trained = then.trained_batch
    if (batch, accum) != trained:
        expected.update(BATCH_KEYS)
    layout = BatchLayout(batch, accum, world_size)
    rescaled = not wanted and layout.global_batch != then.trained_global_batch
    if rescaled:
        expected.update(SCHEDULE_KEYS)
        notes.append(f"batch: per-GPU batch {batch} kept (--keep-per-gpu-batch): global batch "
                     f"{then.trained_global_batch} → {layout.global_batch}; the schedules are laid out for the new "
                     f"steps per epoch and go on from the same sample of the same epoch (the learning rates are not "
                     f"scaled with the batch)")
    elif (batch, accum, world_size) != (*trained, then.world_size) and layout.global_batch == then.trained_global_batch:
        notes.append(f"batch: global batch {layout.global_batch} kept = {batch} per GPU × grad_accum {accum} × "
                     f"{world_size} GPU(s) (was {trained[0]} × {trained[1]} × {then.world_size})")
    return layout, elastic, rescaled, frozenset(expected), tuple(notes)


def fresh_layout(cfg: Config, world_size: int) -> BatchLayout:
    """The layout of a fresh run of `cfg` on `world_size` ranks: data.batch_size × grad_accum per rank, or, with
    optimization.global_batch set, its split with the largest micro batch up to data.batch_size (auto: the whole
    per-GPU share, which the first step halves until it fits). Raises ConfigError when the ranks cannot split it."""
    wanted, batch = cfg.optimization.global_batch, cfg.data.batch_size
    if not wanted:
        return BatchLayout(batch, cfg.optimization.grad_accum, world_size)
    return BatchLayout(*recipe_split(wanted, world_size, wanted if batch == "auto" else batch), world_size)


def recipe_split(global_batch: int, world_size: int, most: int) -> tuple[int, int]:
    """(micro batch ≤ `most`, grad_accum) of optimization.global_batch on `world_size` ranks (split_global_batch);
    ConfigError in one line when the ranks cannot split it."""
    split = split_global_batch(global_batch, world_size, most)
    if split is None:
        raise ConfigError(no_split_line(global_batch, world_size))
    return split


def no_split_line(global_batch: int, world_size: int) -> str:
    """Why `world_size` ranks cannot train at `global_batch`, with the nearest rank counts and global batches that
    work."""
    below = max(n for n in range(1, world_size) if global_batch % n == 0)
    above = next(n for n in range(world_size + 1, global_batch + 1) if global_batch % n == 0) \
        if world_size < global_batch else None
    low, high = global_batch // world_size * world_size, (global_batch // world_size + 1) * world_size
    ranks = f"{below} or {above}" if above else f"{below}"
    batches = f"{low} or {high}" if low else f"{high}"
    return (f"optimization.global_batch {global_batch} cannot be split over {world_size} ranks ({global_batch} / "
            f"{world_size} is not whole): train on {ranks} ranks (the nearest that divide it), or set "
            f"optimization.global_batch to {batches} (the nearest multiples of {world_size})")


def no_split_message(saved: Checkpoint, world_size: int, per_gpu: int) -> str:
    """`per_gpu`: the configured batch × grad_accum, what --keep-per-gpu-batch would keep."""
    g = saved.record.trained_global_batch
    fits = [str(n) for n in range(1, g + 1) if g % n == 0]
    counts = f"{', '.join(fits[:-1])} or {fits[-1]}" if len(fits) > 1 else fits[0]
    return (f"checkpoint {saved.folder} trained with a global batch of {g}; {world_size} GPUs cannot split it "
            f"exactly (per-GPU batch × grad_accum × {world_size} = {g} has no whole solution). Resume on "
            f"{counts} GPU(s) to keep it, or pass --keep-per-gpu-batch to train on with "
            f"{per_gpu} samples per GPU and step (global batch {per_gpu * world_size}, schedules rescaled)")
