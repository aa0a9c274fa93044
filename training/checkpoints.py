"""Training checkpoints: where they live, which are complete, which one a resume takes, saving and restoring them.

A checkpoint is DeepSpeed's tag folder `<run.out_dir>/checkpoints/step00000050/` with run.json (the run that wrote
it: CheckpointRecord) and the COMPLETE marker, written last by rank 0 once every rank finished saving
(training/integrity.py). A folder without the marker is a save that died: `--resume auto` skips it, an explicit
`--resume PATH` refuses it, and the next run's start removes it. With checkpoint.keep_best, the checkpoint of the best
in-training kNN probe is also kept as `checkpoints/best` (hard links to its files, its step in its run.json, its
probe in checkpoints/best.json): keep_last never prunes it, `--resume auto` never takes it.

    saved = find_checkpoint("auto", out_dir)        # the run plan: the newest complete one that verifies, or None
    checkpointer = Checkpointer(cfg, out_dir, last_step)
    step = checkpointer.restore(state, saved, layout, elastic)
    if checkpointer.due(step): checkpointer.save(state, step, record)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from config import config_to_yaml
from model.safe_load import CheckpointError, first_line, weights_only_loads
from training import TrainingError
from training.distributed import gather, on_rank0
from training.best_checkpoint import BEST, offer_best, settle_best
from training.integrity import COMPLETE, mark_complete, verify_checkpoint
from training.out_dir import SPACE_MARGIN, check_space, folder_bytes, is_out_of_space, size_text
from training.states import deepspeed_safe_types, rng_state, set_rng_state
from training.universal import universal_copy
from util.errors import listed
from util.files import fsync_tree, write_file_atomic
from util.urls import redact_tree

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"  # the run that wrote the checkpoint: CheckpointRecord as JSON
TAG = re.compile(r"^step(\d{8})$")
SHOWN = 3  # problems a message names per checkpoint


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def universal_root(out_dir: str | Path) -> Path:
    """Where a run resumed on another world size keeps the universal conversion it loaded, until its first
    checkpoint of its own is complete."""
    return checkpoint_dir(out_dir) / "universal"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def tag_step(name: str) -> Optional[int]:
    """The step of a tag folder's name (tag_for's inverse); None for any other name."""
    match = TAG.match(name)
    return int(match.group(1)) if match else None


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Tags of complete checkpoints, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p.name for p in ckpt_dir.iterdir() if TAG.match(p.name) and (p / COMPLETE).is_file())


def intact_line(ckpt_dir: Path) -> str:
    """What a failed write leaves to go on from, in words: the newest complete checkpoint, intact (a save is complete
    only once its COMPLETE marker is written, after its files, so one cut short never passes for one), or none."""
    tags = complete_tags(ckpt_dir)
    return f"the last complete checkpoint {ckpt_dir / tags[-1]} is intact" if tags else "no complete checkpoint yet"


def clean_crashed_saves(out_dir: str | Path) -> None:
    """Rank 0, holding run.out_dir's lock (no live run writes there): removes the tag folders without a COMPLETE
    marker, saves that died before completing (logged), and what a death while replacing checkpoints/best left."""
    ckpt_dir = checkpoint_dir(out_dir)
    if not ckpt_dir.is_dir():
        return
    for path in sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and TAG.match(p.name)):
        if not (path / COMPLETE).is_file():
            shutil.rmtree(path)
            logger.warning("removed %s: a save that did not complete (the run died or failed while writing it)", path)
    settle_best(ckpt_dir)


def prune(ckpt_dir: Path, keep_last: int, newest: str) -> list[str]:
    """Deletes all but the newest `keep_last` complete checkpoints up to `newest`, the one just saved. Complete ones
    after it are kept: an earlier course of this run left them, which a resume went back from; counting them would
    delete the good checkpoints this run saves and keep those."""
    tags = [tag for tag in complete_tags(ckpt_dir) if tag <= newest]
    doomed = tags[:-keep_last] if keep_last > 0 else []
    for tag in doomed:
        shutil.rmtree(ckpt_dir / tag)
    return doomed


def keep_replaced(folder: Path) -> Optional[Path]:
    """Rank 0, before a save into `folder`: a complete checkpoint already there (an earlier course of this run, which
    a resume went back from) is renamed to `<tag>.replaced-<time>`, not overwritten (logged); no resume, prune or
    clean-up touches that name. Returns it. Raises TrainingError when it cannot be renamed."""
    if not (folder / COMPLETE).is_file():
        return None
    dest = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    while dest.exists():  # set aside twice within a second
        dest = dest.with_name(dest.name + "+")
    try:
        folder.rename(dest)
    except OSError as err:
        raise TrainingError(f"a checkpoint of the same step is already in {folder} and cannot be set aside "
                            f"({err.strerror or err}); move it away and resume with --resume auto") from None
    logger.warning("a checkpoint of step %d was already in %s (an earlier course of this run, which this one went "
                   "back from): kept as %s", tag_step(folder.name), folder, dest)
    return dest


# ------------------------------------------------------------------------------------------------ what a resume reads

@dataclass(frozen=True)
class CheckpointRecord:
    """run.json: what a checkpoint says about the run that wrote it."""

    step: int
    world_size: int
    identity: dict[str, Any]  # training.plan.resume_identity: what a resume must keep
    requested: tuple[int | str, int]  # (data.batch_size, optimization.grad_accum) its config asked for (batch: or auto)
    schedule_shift: int  # the schedules' step minus the step count (non-zero after --keep-per-gpu-batch rescaled)
    position: tuple[int, int]  # (epoch, samples of it read by all ranks)
    run_id: str = ""  # the run's id, kept across its launches (the W&B run id); "" in checkpoints older than it
    init: Optional[dict] = None  # the warm start the run began from (training/warm_start.py), None: none

    @property
    def trained_global_batch(self) -> int:
        return int(self.identity["global batch size"])

    @property
    def trained_batch(self) -> tuple[int, int]:
        """(per-GPU batch, grad_accum) its run trained with (a plan may have chosen them, not its config)."""
        return int(self.identity["data.batch_size"]), int(self.identity["optimization.grad_accum"])

    def to_json(self) -> str:
        """Any URL in it redacted (util.urls.redact_tree): a resume compares identities redacted (identity_changes)."""
        return json.dumps(redact_tree(dataclasses.asdict(self)), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "CheckpointRecord":
        """Raises KeyError, TypeError, ValueError or IndexError on a damaged file."""
        meta = json.loads(text)
        requested, position, init = meta["requested"], meta["position"], meta.get("init")
        return cls(int(meta["step"]), int(meta["world_size"]), dict(meta["identity"]),
                   (requested[0] if requested[0] == "auto" else int(requested[0]), int(requested[1])),
                   int(meta["schedule_shift"]), (int(position[0]), int(position[1])), str(meta.get("run_id", "")),
                   None if init is None else dict(init))


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint that verifies: its tag folder and its run.json."""

    folder: Path
    record: CheckpointRecord


def read_record(folder: Path) -> CheckpointRecord:
    """The run.json of the checkpoint `folder`; a CheckpointError naming it when it is damaged."""
    path = folder / RUN_FILE
    try:
        return CheckpointRecord.from_json(path.read_text())
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err}); the checkpoint is damaged: "
                              f"choose another one") from None


def find_checkpoint(resume: str, out_dir: str | Path) -> Optional[Checkpoint]:
    """The checkpoint `resume` names (choose_checkpoint) with its run.json; None for a fresh start."""
    folder = choose_checkpoint(resume, out_dir)
    return None if folder is None else Checkpoint(folder, read_record(folder))


def choose_checkpoint(resume: str, out_dir: str | Path) -> Optional[Path]:
    """'' → None (fresh start); 'auto' → the newest complete checkpoint of run.out_dir that verifies, or None when
    it has no complete one; a path (a tag folder) → that checkpoint, which must exist, be complete and verify.
    Raises CheckpointError in one line naming the damaged file.

    Every rank verifies, in the run plan, before any process group exists: without one the ranks cannot share a
    verdict, so each reaches the choice alone; reading the same bytes, all choose the same checkpoint (restore
    checks they did). docs/training.md, "Integrity"."""
    if not resume:
        return None
    if resume == "auto":
        found = newest_verified(checkpoint_dir(out_dir))
        if found is None:
            logger.info("--resume auto: no complete checkpoint in %s (%s): starting fresh", checkpoint_dir(out_dir),
                        "it holds none" if checkpoint_dir(out_dir).is_dir() else "no such folder")
        return found
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist: give a tag folder such as "
                              f"{checkpoint_dir(out_dir) / tag_for(1000)}, or --resume auto")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(not_a_checkpoint(path, "--resume", ", or --resume auto (run.out_dir's newest)"))
    problems = verify_checkpoint(path, folder_step(path))
    if problems:
        raise CheckpointError(f"checkpoint {path} is damaged: {listed(problems, SHOWN)}; it is kept as it is: choose "
                              f"another checkpoint (--resume auto takes the newest one that verifies)")
    return path


def folder_step(folder: Path) -> int:
    """The step of a complete checkpoint folder: its tag's, or for one without a step in its name (checkpoints/best)
    its run.json's."""
    step = tag_step(folder.name)
    return step if step is not None else read_record(folder).step


def not_a_checkpoint(path: Path, flag: str, other: str = "") -> str:
    """Why the folder `path` (no COMPLETE marker) is not a checkpoint to give `flag`, naming the one to give when it
    holds some: a run folder (run.out_dir) or its checkpoints/ folder; `other` names what else the flag takes."""
    for ckpt_dir, what in ((checkpoint_dir(path), "a run folder"), (path, "a run's checkpoints folder")):
        if tags := complete_tags(ckpt_dir):
            best = (f", or the best by the in-training kNN probe: {flag} {ckpt_dir / BEST}"
                    if (ckpt_dir / BEST / COMPLETE).is_file() else "")
            return (f"{path} is {what}, not a checkpoint: give one of its {len(tags)} checkpoint(s), e.g. the "
                    f"newest: {flag} {ckpt_dir / tags[-1]}{best}")
    if tag_step(path.name) is not None:
        return f"checkpoint {path} is incomplete (no {COMPLETE} marker: its run died while saving); choose an older one"
    return (f"{path} is not a checkpoint of train.py (no {COMPLETE} marker, no complete checkpoints in it): give a "
            f"tag folder such as <run.out_dir>/checkpoints/{tag_for(1000)}{other}")


def newest_verified(ckpt_dir: Path) -> Optional[Path]:
    """--resume auto: the newest complete checkpoint that verifies, None when there is no complete one. Damaged ones
    are skipped and kept; each is logged naming what differs, with the one chosen. Raises CheckpointError when every
    one is damaged: a fresh start is the user's call, never a silent one."""
    damaged = {}
    for tag in reversed(complete_tags(ckpt_dir)):
        problems = verify_checkpoint(ckpt_dir / tag, tag_step(tag))
        if problems:
            damaged[tag] = problems
            continue
        for old, found in damaged.items():
            rank0_warning("checkpoint %s is damaged, skipped (it is kept as it is): %s", ckpt_dir / old,
                          listed(found, SHOWN))
        if damaged:
            rank0_warning("--resume auto: resuming from %s, the newest checkpoint that verifies", ckpt_dir / tag)
        return ckpt_dir / tag
    if damaged:
        named = "; ".join(f"{tag} ({listed(found, 1)})" for tag, found in damaged.items())
        raise CheckpointError(f"no checkpoint in {ckpt_dir} verifies: {named}. They are kept as they are: start "
                              f"afresh in another run.out_dir, or move them away first")
    return None


def rank0_warning(message: str, *args) -> None:
    """A warning of the run plan, which every rank makes before the process group: rank 0's alone is shown."""
    if os.environ.get("RANK", "0") == "0":
        logger.warning(message, *args)


# ------------------------------------------------------------------------------------------------ saving, restoring

@dataclass
class TrainState:
    """What a checkpoint holds of a run: DeepSpeed's engine (context encoder + predictor and their AdamW), the target
    encoder and its EMA, the loader's position."""

    engine: Any
    target: torch.nn.Module
    ema: Any
    loader: Any


class Checkpointer:
    """Saves the run's checkpoints when they are due (every checkpoint.every_steps and at the run's last step), keeps
    the newest checkpoint.keep_last (and the best by the kNN probe: checkpoint.keep_best), and restores the one the
    run plan chose."""

    def __init__(self, cfg, out_dir: Path, last_step: int):
        self.dir, self.out_dir, self.last_step = checkpoint_dir(out_dir), Path(out_dir), last_step
        self.every, self.keep_last = cfg.checkpoint.every_steps, cfg.checkpoint.keep_last
        self.keep_best, self.probe = cfg.checkpoint.keep_best, None  # rank 0: (step, kNN top-1), the latest
        self.config_yaml = config_to_yaml(cfg)  # in every checkpoint's client state, URLs redacted

    def probed(self, step: int, top1: float) -> None:
        """Rank 0: the in-training kNN probe of `step` (progress.py; with keep_best it runs at every due save), which
        the save of that step is ranked by."""
        if self.keep_best:
            self.probe = (step, top1)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last_step

    def next_size(self, state: TrainState) -> int:
        """The bytes the next checkpoint will take: the newest complete one's, else counted from the parameters
        (module weights in their dtype, fp32 master weights and two AdamW moments, the fp32 target encoder)."""
        tags = complete_tags(self.dir)
        if tags:
            return folder_bytes(self.dir / tags[-1])
        total = 0
        for p in state.engine.module.parameters():
            numel = getattr(p, "ds_numel", p.numel())  # ZeRO-3 leaves an empty placeholder on each rank
            total += numel * (p.element_size() + 12)
        return total + sum(p.numel() * 4 for p in state.target.parameters())

    def save(self, state: TrainState, step: int, record: CheckpointRecord, prune_old: bool = True) -> Path:
        """Saves `step` from every rank: DeepSpeed's files with the target encoder, every rank's loader and RNG state
        and the config as client state; then rank 0 writes `record` (run.json) and the COMPLETE marker, and prunes.
        One gather before the write (each rank's weights check, room on disk, loader and RNG state), so all stop
        together and none waits inside the write for a rank that gave up; one after it (the write's outcome). A
        save that fails leaves no folder behind and raises on every rank; the last good checkpoint is kept.
        `prune_old` false keeps every older checkpoint (a save of weights that may be worse: the collapse alarm's)."""
        state.ema.wait()
        tag = tag_for(step)
        folder, need = self.dir / tag, int(self.next_size(state) * SPACE_MARGIN)
        self.dir.mkdir(parents=True, exist_ok=True)
        records = gather({**weights_record(state), "short": self._no_room(folder, need),
                          "loader": state.loader.state_dict(), "rng": rng_state()})
        digest = check_records(records, step, self.dir)
        if any(r["short"] for r in records):
            raise TrainingError(next(r["short"] for r in records if r["short"]))
        client = {"step": step, "config": self.config_yaml, "target_encoder": state.target.state_dict(),
                  "loader": [r["loader"] for r in records], "rng": [r["rng"] for r in records],
                  "world_size": dist.get_world_size()}
        self._write(state, folder, client, need)
        if dist.get_rank() == 0:
            write_file_atomic(folder / RUN_FILE, record.to_json().encode())
            hashed = mark_complete(folder, step)
            for old in prune(self.dir, self.keep_last, tag) if prune_old else ():
                logger.info("removed old checkpoint %s", old)
            if universal_root(self.out_dir).is_dir():  # the run has a checkpoint of its own now
                shutil.rmtree(universal_root(self.out_dir))
                logger.info("removed %s: the universal conversion this run resumed from", universal_root(self.out_dir))
            logger.info("saved checkpoint %s (ranks agree: target encoder digest %s; %s)", folder, digest, hashed)
            if self.probe is not None and self.probe[0] == step:
                offer_best(folder, step, self.probe[1])
        return folder

    def _no_room(self, folder: Path, need: int) -> Optional[str]:
        """Why this rank cannot save into `folder` (no room for `need` bytes), or None; rank 0 first sets aside a
        complete checkpoint already there, before any rank writes into the folder."""
        try:
            if dist.get_rank() == 0:
                keep_replaced(folder)
            kept = complete_tags(self.dir)
            check_space(self.dir, need, f"checkpoint {folder.name}", self.dir / kept[-1] if kept else None)
        except TrainingError as err:
            return str(err)
        return None

    def _write(self, state: TrainState, folder: Path, client: dict, need: int) -> None:
        """DeepSpeed's save of every rank's files into `folder`, synced; on any rank's failure (a full disk) the
        folder is removed and every rank raises one line."""
        error = None
        try:
            folder.mkdir(exist_ok=True)
            state.engine.save_checkpoint(str(self.dir), tag=folder.name, client_state=client, save_latest=False)
            fsync_tree(folder)
        except (OSError, RuntimeError) as err:
            free = shutil.disk_usage(self.dir).free
            error = (f"no space left on the file system of {self.dir}: need about {size_text(need)} for checkpoint "
                     f"{folder.name}, have {size_text(free)} free" if is_out_of_space(err) or free < need
                     else f"cannot write checkpoint {folder} ({type(err).__name__}: {err})")
            dist.barrier()  # the failed write skipped DeepSpeed's closing barrier: wait it here
        errors = [e for e in gather(error) if e]
        if errors:
            if dist.get_rank() == 0:
                shutil.rmtree(folder, ignore_errors=True)
            dist.barrier()
            raise TrainingError(f"{errors[0]}; the unfinished folder was removed, {intact_line(self.dir)}: free some "
                                f"space and resume with --resume auto")

    def restore(self, state: TrainState, saved: Optional[Checkpoint], layout, elastic: bool) -> int:
        """Restores checkpoint `saved` (the run plan's choice) into `state`; returns the step the run goes on from (0
        for a fresh start). A checkpoint of another world size (`elastic`) is loaded from its universal conversion;
        a loader of another `layout` (training.plan.BatchLayout) continues where the saved ranks stopped. First the
        ranks check they chose the same checkpoint (each chose it alone: find_checkpoint)."""
        chosen = gather(None if saved is None else str(saved.folder))
        if len(set(chosen)) > 1:
            raise CheckpointError(f"the ranks chose different checkpoints to resume ({', '.join(map(str, chosen))}): "
                                  f"their nodes see different files in {self.dir}; every node must see the same "
                                  f"run.out_dir")
        if saved is None:  # the run plan said why (no --resume, or none found)
            return 0
        folder = saved.folder
        if elastic:  # rank 0 converts it while the others wait
            on_rank0(universal_copy, saved, universal_root(self.out_dir))
            folder = universal_root(self.out_dir) / saved.folder.name
        client = load(state, folder)
        step, rank, then = client["step"], dist.get_rank(), saved.record
        if (then.world_size, *then.trained_batch) == (layout.world_size, layout.batch_size, layout.grad_accum):
            state.loader.load_state_dict(client["loader"][rank])
            set_rng_state(client["rng"][rank])
        else:
            logger.info(state.loader.continue_from(client["loader"], then.world_size, then.trained_batch[0], step))
            set_rng_state(client["rng"][rank % len(client["rng"])])  # the old ranks' states, round robin
        logger.info("resumed from %s at step %d", saved.folder, step)
        return step


def load(state: TrainState, folder: Path) -> dict:
    """Loads DeepSpeed's states (every torch.load inside unpickling weights_only, DeepSpeed's own included) and the
    target encoder from tag folder `folder`; returns the client state (step, loader, RNG states)."""
    try:
        with weights_only_loads(deepspeed_safe_types()):
            path, client = state.engine.load_checkpoint(str(folder.parent), tag=folder.name)
    except CheckpointError:
        raise
    except Exception as err:  # DeepSpeed/torch raise many types for damaged files; re-raised naming the checkpoint
        raise CheckpointError(f"checkpoint {folder} cannot be loaded ({type(err).__name__}: {first_line(err)}); it "
                              f"may be corrupt: choose another one") from err
    if path is None or not client or "step" not in client:
        raise CheckpointError(f"checkpoint {folder} cannot be loaded: DeepSpeed found no model states in it")
    state.target.load_state_dict(client["target_encoder"])
    return client


def weights_record(state: TrainState) -> dict:
    """What a save checks of this rank's weights: whether every one is finite, and a digest of its target encoder
    (every rank must hold the same one). One host sync."""
    tensors = [getattr(p, "ds_tensor", p) for p in state.engine.module.parameters()] + list(state.target.parameters())
    finite = bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.numel()]).all())
    digest = hashlib.sha256()
    for p in state.target.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return {"finite": finite, "digest": digest.hexdigest()[:16]}


def check_records(records: list[dict], step: int, ckpt_dir: Path) -> str:
    """Refuses to save non-finite weights on any rank (a step can make the weights inf or NaN before any logged loss
    is; saving them would prune a good checkpoint) or ranks whose target encoders differ; returns the agreed
    digest."""
    if not all(r["finite"] for r in records):
        raise TrainingError(f"non-finite weights at step {step}; stopped without saving, the last good checkpoint "
                            f"is kept in {ckpt_dir}")
    digests = [r["digest"] for r in records]
    if len(set(digests)) != 1:
        raise TrainingError(f"ranks disagree at step {step}: target encoder digests {digests}")
    return digests[0]
