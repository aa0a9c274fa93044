"""Training checkpoints: where they live, which are complete, which to resume, which to prune; saving, loading, and
restoring the checkpoint the run plan (training/plan.py) chose and checked, through DeepSpeed's universal conversion
when the world size differs.

A checkpoint is DeepSpeed's tag folder `<run.out_dir>/checkpoints/step00000050/`; it counts as complete only once the
marker file COMPLETE is written into it, after every rank finished saving. A run killed while saving leaves a folder
without the marker, which `--resume auto` skips and an explicit `--resume PATH` refuses. The marker records the size
and sha256 of every file of the folder; a resume checks them before loading (resolve_resume), so a checkpoint damaged
since its save is skipped by `--resume auto` and refused by `--resume PATH`, naming the file, and never deleted.

    plan = plan_run(cfg, world_size, request)       # which checkpoint, the batch, the checks against its run.json
    ... build the engine (DeepSpeed's load_universal when plan.elastic), the loader ...
    step = restore_saved(engine, target, loader, plan, out_dir)
    ...
    save_checkpoint(engine, ema, target, loader, cfg, plan, step, out_dir)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from config import config_to_yaml
from model.official import CheckpointError, first_line, safe_load, weights_only_loads
from training import TrainingError
from training.distributed import gather, on_rank0
from training.run_dir import SPACE_MARGIN, check_space, folder_bytes, is_out_of_space, remove_crashed_saves
from util.files import files_sha256, fsync_tree, write_file_atomic

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
COMPLETE = "COMPLETE"  # JSON {"step": N, "files": {relative path: {"bytes": n, "sha256": hex}}}; before 2026-12 "N\n"
SOURCE_FILE = "SOURCE.json"  # in a converted folder: which checkpoint it was converted from
CONVERSION_SPACE = 2.5  # the universal copy (fp32 masters and moments, module states) plus DeepSpeed's temp files
RUN_FILE = "run.json"  # the run that wrote the checkpoint: training.plan.RunRecord as JSON
TAG = re.compile(r"^step(\d{8})$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
SHOWN = 3  # differences a message names per checkpoint


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def universal_root(out_dir: str | Path) -> Path:
    """Where a run resumed on another world size keeps the universal conversion it loaded (restore_saved), until its
    first checkpoint of its own is complete."""
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
    tags = [p.name for p in ckpt_dir.iterdir() if TAG.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(tags)


def clean_crashed_saves(out_dir: str | Path) -> None:
    """Removes the folders of saves that died before completing (logged); called by rank 0 holding the run's lock."""
    for name in remove_crashed_saves(checkpoint_dir(out_dir), TAG, COMPLETE):
        logger.warning("removed %s: a save that did not complete (the run died or failed while writing it)",
                       checkpoint_dir(out_dir) / name)


def prune(ckpt_dir: Path, keep_last: int, newest: str) -> list[str]:
    """Deletes all but the newest `keep_last` complete checkpoints up to `newest`, the one just saved (never an
    incomplete newer one's only backup). Complete ones after it are kept: an earlier course of this run left them,
    which a resume went back from (an older --resume PATH, or a damaged newer one that --resume auto skipped); counting
    them would delete the good checkpoints this run saves and keep those."""
    tags = [tag for tag in complete_tags(ckpt_dir) if tag <= newest]
    doomed = tags[:-keep_last] if keep_last > 0 else []
    for tag in doomed:
        shutil.rmtree(ckpt_dir / tag)
    return doomed


def resolve_resume(resume: str, out_dir: str | Path) -> Optional[tuple[Path, str]]:
    """'' → None (fresh start); 'auto' → the newest complete checkpoint of this run that verifies (newest_verified),
    or None when it has no complete one; a path (a tag folder) → that checkpoint, which must exist, be complete and
    verify. Returns (load_dir, tag). Raises CheckpointError in one line naming the damaged file.

    Every rank verifies, here in the run plan, before any process group exists: sizes first, then each file's
    sha256 (hash_workers() threads per rank). Without a process group the ranks cannot share a verdict, so each
    reaches the choice alone; reading the same bytes (run.out_dir is storage every rank sees) all choose the same
    checkpoint (restore_saved checks they did), where a rank that trusted another's check could go on from another
    one. A node reads the files from storage once (its page cache serves its other ranks, and the load after); each
    rank hashes at ~1.8 GB/s per core, the largest file bounding the time. Hashing 1/N per rank after the process
    group would find damage only after the plan was made from the checkpoint (docs/training.md, "Integrity")."""
    if not resume:
        return None
    if resume == "auto":
        return newest_verified(checkpoint_dir(out_dir))
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist: give a tag folder such as "
                              f"{checkpoint_dir(out_dir) / tag_for(1000)}, or --resume auto")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete (no {COMPLETE} marker: its run died while saving); "
                              f"choose an older one or --resume auto")
    problems = checkpoint_problems(path)
    if problems:
        raise CheckpointError(f"checkpoint {path} is damaged: {summary(problems)}; it is kept as it is: choose "
                              f"another checkpoint (--resume auto takes the newest one that verifies)")
    return path.parent, path.name


def newest_verified(ckpt_dir: Path) -> Optional[tuple[Path, str]]:
    """--resume auto: (ckpt_dir, tag) of the newest complete checkpoint that verifies, None when there is no complete
    one. Damaged ones are skipped and kept; each is logged naming what differs, with the one chosen. Raises
    CheckpointError when every one is damaged: a fresh start is the user's call, never a silent one."""
    damaged = {}
    for tag in reversed(complete_tags(ckpt_dir)):
        problems = checkpoint_problems(ckpt_dir / tag)
        if problems:
            damaged[tag] = problems
            continue
        for old, found in damaged.items():
            rank0_warning("checkpoint %s is damaged, skipped (it is kept as it is): %s", ckpt_dir / old, summary(found))
        if damaged:
            rank0_warning("--resume auto: resuming from %s, the newest checkpoint that verifies", ckpt_dir / tag)
        return ckpt_dir, tag
    if damaged:
        named = "; ".join(f"{tag} ({summary(found, 1)})" for tag, found in damaged.items())
        raise CheckpointError(f"no checkpoint in {ckpt_dir} verifies: {named}. They are kept as they are: start "
                              f"afresh in another run.out_dir, or move them away first")
    return None


def summary(problems: list[str], shown: int = SHOWN) -> str:
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")


def rank0_warning(message: str, *args) -> None:
    """A warning of the run plan, which every rank makes before the process group: rank 0's alone is shown."""
    if os.environ.get("RANK", "0") == "0":
        logger.warning(message, *args)


# ------------------------------------------------------------------------------------------------ integrity

def saved_files(folder: Path) -> list[str]:
    """The files of tag folder `folder` as sorted relative paths: every file but the COMPLETE marker and hidden
    names (a write's temporary file)."""
    names = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_file() and rel.as_posix() != COMPLETE and not any(part.startswith(".") for part in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def hash_workers() -> int:
    """Threads that hash a checkpoint's files in this process: the CPUs it may use, shared with the other ranks of
    its node (LOCAL_SIZE from DeepSpeed's launcher, LOCAL_WORLD_SIZE from torchrun's)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)
    return max(1, len(os.sched_getaffinity(0)) // max(1, local))


def mark_complete(folder: Path, step: int) -> str:
    """Rank 0, once every rank's files and run.json are synced: records the size and sha256 of every file of tag
    folder `folder` (saved_files: every rank's, hashed in parallel threads) in its COMPLETE marker, written last and
    atomically (a crash before leaves no marker: the folder stays incomplete). Returns what it hashed, for the log."""
    names = saved_files(folder)
    paths = [folder / name for name in names]
    sizes = [path.stat().st_size for path in paths]
    digests, hashed = timed_sha256(paths, sum(sizes))
    marker = {"step": step, "files": {name: {"bytes": size, "sha256": digest}
                                      for name, size, digest in zip(names, sizes, digests)}}
    write_file_atomic(folder / COMPLETE, json.dumps(marker, indent=1).encode())
    return hashed


def timed_sha256(paths: list[Path], total_bytes: int) -> tuple[list[str], str]:
    """The sha256 of each file, hashed in hash_workers() threads, and what was hashed in how long (for the log)."""
    started, workers = time.perf_counter(), hash_workers()
    digests = files_sha256(paths, workers)
    return digests, (f"sha256 of {len(paths)} files ({total_bytes / 1e9:.2f} GB) in "
                     f"{time.perf_counter() - started:.2f} s with {workers} thread(s)")


def read_marker(folder: Path) -> tuple[int, Optional[dict]]:
    """(step, {relative path: {"bytes": n, "sha256": hex}}) from `folder`'s COMPLETE marker; the files are None in
    a marker written before checkpoints recorded digests ("<step>\\n"). Raises ValueError saying what is wrong."""
    try:
        text = (folder / COMPLETE).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None
    if text.strip().isdigit():
        return int(text), None
    try:
        meta = json.loads(text)
        step, files = int(meta["step"]), dict(meta["files"])
        for name, entry in files.items():
            rel = PurePosixPath(name)
            if (rel.is_absolute() or ".." in rel.parts or type(entry["bytes"]) is not int
                    or not SHA256.match(entry["sha256"])):
                raise ValueError(f"its entry {name!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"not a marker train.py writes ({type(err).__name__}: {err})") from None
    return step, files


def checkpoint_problems(folder: Path) -> Optional[list[str]]:
    """What is wrong with complete checkpoint `folder`, each naming the file: [] when every file its save recorded
    in COMPLETE is there with its size and sha256, and no other; None (logged) when its marker predates recorded
    digests: there is nothing to check it against."""
    try:
        step, recorded = read_marker(folder)
    except ValueError as err:
        return [f"{folder / COMPLETE}: unreadable ({err})"]
    folder_step = tag_step(folder.name)
    if folder_step is not None and folder_step != step:
        return [f"{folder / COMPLETE}: says step {step}, not the folder's {folder_step}"]
    if recorded is None:
        rank0_warning("checkpoint %s was saved before checkpoints recorded digests of their files: resuming it "
                      "unverified", folder)
        return None
    try:
        return differences(folder, recorded)
    except OSError as err:  # a file that cannot be read (a bad sector: EIO) is damage like any other
        return [f"{err.filename or folder}: cannot be read ({err.strerror or err})"]


def differences(folder: Path, recorded: dict) -> list[str]:
    """What differs in `folder` from the files its save `recorded`, each naming the file: files missing, added or of
    another size (cheap: checked first, and nothing is hashed when one is found), else each whose sha256 differs.
    Logs the seconds the hashing took."""
    found = set(saved_files(folder))
    out = [f"{folder / name}: missing" for name in sorted(set(recorded) - found)]
    out += [f"{folder / name}: a file its save did not write" for name in sorted(found - set(recorded))]
    for name in sorted(set(recorded) & found):
        size, want = (folder / name).stat().st_size, recorded[name]["bytes"]
        if size != want:
            out.append(f"{folder / name}: {size:,} bytes, its save wrote {want:,}")
    if out:
        return out
    names = sorted(recorded)
    digests, hashed = timed_sha256([folder / name for name in names], sum(e["bytes"] for e in recorded.values()))
    logger.info("checkpoint %s: %s", folder, hashed)
    return [f"{folder / name}: its sha256 differs from the one its save recorded (same size: bytes inside it "
            f"changed)" for name, digest in zip(names, digests) if digest != recorded[name]["sha256"]]


def set_aside(folder: Path) -> Optional[Path]:
    """Rank 0, before a save into `folder`: a complete checkpoint already there (an earlier course of this run, which
    a resume went back from: an older --resume PATH, or a damaged newer one --resume auto skipped) is renamed to
    `<tag>.replaced-<time>`, not overwritten (logged); no resume, prune or clean-up touches that name. Returns it.
    Raises TrainingError when it cannot be renamed."""
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


# ------------------------------------------------------------------------------------------------ saving, loading

def load_states_file(path: str | Path, map_location="cpu", allowed: Sequence[type] = ()) -> dict:
    """A torch checkpoint file as a dict, unpickled with weights_only=True (model.official.safe_load): tensors, plain
    values and the `allowed` classes only, so that a planted pickle cannot run code. Raises CheckpointError naming
    the file."""
    state = safe_load(Path(path), map_location, allowed)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not the dict of states a checkpoint holds")
    return state


def deepspeed_safe_types() -> list[type]:
    """The classes of DeepSpeed's own that its ZeRO optimizer states pickle (found with
    torch.serialization.get_unsafe_globals_in_checkpoint); plain data holders, safe to rebuild."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def rng_state() -> dict:
    """This process's RNG states in types that load with weights_only=True (numpy's key array as a tensor)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def weights_record(engine, target) -> dict:
    """What a save checks of this rank's weights: whether every one is finite, and a digest of its target encoder
    (every rank must hold the same one). One host sync."""
    tensors = [getattr(p, "ds_tensor", p) for p in engine.module.parameters()] + list(target.parameters())
    finite = bool(torch.stack([torch.isfinite(t).all() for t in tensors if t.numel()]).all())
    digest = hashlib.sha256()
    for p in target.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return {"finite": finite, "digest": digest.hexdigest()[:16]}


def check_records(records: list[dict], step: int, ckpt_dir: Path) -> str:
    """Refuses to save non-finite weights on any rank (with no per-step overflow check, config.deepspeed_config, a
    step can make the weights inf or NaN before any logged loss is; saving them would prune a good checkpoint) or
    ranks whose target encoders differ; returns the agreed digest."""
    if not all(r["finite"] for r in records):
        raise TrainingError(f"non-finite weights at step {step}; stopped without saving, the last good checkpoint "
                            f"is kept in {ckpt_dir}")
    digests = [r["digest"] for r in records]
    if len(set(digests)) != 1:
        raise TrainingError(f"ranks disagree at step {step}: target encoder digests {digests}")
    return digests[0]


def checkpoint_bytes(engine, target, ckpt_dir: Path) -> int:
    """The size the next checkpoint will take: the newest complete one's, else counted from the parameters (module
    weights in their dtype, fp32 master weights and two AdamW moments, the fp32 target encoder)."""
    tags = complete_tags(ckpt_dir)
    if tags:
        return folder_bytes(ckpt_dir / tags[-1])
    total = 0
    for p in engine.module.parameters():
        numel = getattr(p, "ds_numel", p.numel())  # ZeRO-3 leaves an empty placeholder on each rank
        total += numel * (p.element_size() + 12)
    return total + sum(p.numel() * 4 for p in target.parameters())


def save_checkpoint(engine, ema, target, loader, cfg, plan, step: int, out_dir: Path) -> Path:
    """Saves `step` from every rank: DeepSpeed's files, with the target encoder, every rank's loader and RNG state and
    the config as client state. One gather of one record per rank (its weights' check, its room on disk, its loader
    and RNG state) before the write, one of the write's outcome after it: each rank checks the room before the first
    gather (out_dir is on storage every rank sees), so all stop together and none waits inside the write for a rank
    that gave up. After every rank wrote and synced its files, rank 0 writes run.json (training.plan.RunRecord) and
    the COMPLETE marker with every file's size and sha256 (mark_complete), then prunes the oldest and any universal
    conversion. A complete checkpoint already at this step is set aside first, not overwritten (set_aside). A save that
    fails (a full disk) leaves no folder behind and raises on every rank; the last good checkpoint is kept."""
    ema.wait()
    ckpt_dir, tag = checkpoint_dir(out_dir), tag_for(step)
    folder = ckpt_dir / tag
    need = int(checkpoint_bytes(engine, target, ckpt_dir) * SPACE_MARGIN)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    try:  # each rank looks before the gather, so that all decide together and none waits in the write for another
        if dist.get_rank() == 0:  # before the gather, so no rank writes into the folder before it is set aside
            set_aside(folder)
        check_space(ckpt_dir, need, f"checkpoint {tag}")
        short = None
    except TrainingError as err:
        short = str(err)
    records = gather({**weights_record(engine, target), "short": short, "loader": loader.state_dict(),
                      "rng": rng_state()})
    digest = check_records(records, step, ckpt_dir)
    if any(r["short"] for r in records):
        raise TrainingError(next(r["short"] for r in records if r["short"]))
    client = {"step": step, "config": config_to_yaml(cfg), "target_encoder": target.state_dict(),
              "loader": [r["loader"] for r in records], "rng": [r["rng"] for r in records],
              "world_size": dist.get_world_size()}
    error = None
    try:
        folder.mkdir(exist_ok=True)
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client, save_latest=False)
        fsync_tree(folder)
    except (OSError, RuntimeError) as err:
        free = shutil.disk_usage(ckpt_dir).free
        error = (f"no space left on the file system of {ckpt_dir}: need about {need / 1e9:.2f} GB for checkpoint "
                 f"{tag}, have {free / 1e9:.2f} GB free" if is_out_of_space(err) or free < need
                 else f"cannot write checkpoint {folder} ({type(err).__name__}: {err})")
        dist.barrier()  # the failed write skipped DeepSpeed's closing barrier: wait it here
    errors = [e for e in gather(error) if e]
    if errors:
        if dist.get_rank() == 0:
            shutil.rmtree(folder, ignore_errors=True)
        dist.barrier()
        kept = complete_tags(ckpt_dir)
        raise TrainingError(f"{errors[0]}; the unfinished folder was removed, the last good checkpoint is "
                            f"{ckpt_dir / kept[-1] if kept else '(none)'}: free some space and resume with "
                            f"--resume auto")
    if dist.get_rank() == 0:
        write_file_atomic(folder / RUN_FILE, plan.record(step, loader.position()).to_json().encode())
        hashed = mark_complete(folder, step)
        for old in prune(ckpt_dir, cfg.checkpoint.keep_last, tag):
            logger.info("removed old checkpoint %s", old)
        if universal_root(out_dir).is_dir():  # the run has a checkpoint of its own now
            shutil.rmtree(universal_root(out_dir))
            logger.info("removed %s: the universal conversion this run resumed from", universal_root(out_dir))
        logger.info("saved checkpoint %s (ranks agree: target encoder digest %s; %s)", folder, digest, hashed)
    return folder


def restore(engine, target, load_dir: Path, tag: str) -> dict:
    """Loads DeepSpeed's states (every torch.load inside unpickling weights_only, DeepSpeed's own included) and the
    target encoder from checkpoint `tag` in `load_dir`; returns the client state (step, loader, RNG states)."""
    try:
        with weights_only_loads(deepspeed_safe_types()):
            path, client = engine.load_checkpoint(str(load_dir), tag=tag)
    except CheckpointError:
        raise
    except Exception as err:  # DeepSpeed/torch raise many types for damaged files; re-raised naming the checkpoint
        raise CheckpointError(f"checkpoint {load_dir / tag} cannot be loaded ({type(err).__name__}: "
                              f"{first_line(err)}); it may be corrupt: choose another one") from err
    if path is None or not client or "step" not in client:
        raise CheckpointError(f"checkpoint {load_dir / tag} cannot be loaded: DeepSpeed found no model states in it")
    target.load_state_dict(client["target_encoder"])
    return client


# ------------------------------------------------------------------------------------------------ resuming

def restore_saved(engine, target, loader, plan, out_dir: Path) -> int:
    """Restores what `plan.saved` holds into the engine, the target encoder and the loader; returns the step the run
    goes on from (0 for a fresh start). A checkpoint of another world size is converted first (rank 0); a loader of
    another layout continues where the saved ranks stopped (pipeline.loading.loader.Loader.continue_from). When the global
    batch changed (--keep-per-gpu-batch) the step count goes on (checkpoint tags and logs stay monotonic) while the
    schedules go on at the plan's shift. First the ranks check they chose the same checkpoint (each chose it alone,
    resolve_resume)."""
    saved = plan.saved
    chosen = gather(None if saved is None else str(saved.folder))
    if len(set(chosen)) > 1:
        raise CheckpointError(f"the ranks chose different checkpoints to resume ({', '.join(map(str, chosen))}): "
                              f"their nodes see different files in {checkpoint_dir(out_dir)}; every node must see "
                              f"the same run.out_dir")
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

def converted(saved, out_dir: Path) -> Path:
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
