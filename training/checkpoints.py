"""Training checkpoints: where they live, which are complete, which to resume, which to prune; saving and loading.

A checkpoint is DeepSpeed's tag folder `<run.out_dir>/checkpoints/step00000050/`; it counts as complete only once the
marker file COMPLETE is written into it, after every rank finished saving. A run killed while saving leaves a folder
without the marker, which `--resume auto` skips and an explicit `--resume PATH` refuses.
"""
from __future__ import annotations

import hashlib
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from config import config_to_yaml
from training import TrainingError
from training.distributed import gather

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
TAG = re.compile(r"^step(\d{8})$")


class CheckpointError(TrainingError):
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


# ------------------------------------------------------------------------------------------------ saving, loading

def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def check_ranks_agree(target, step: int) -> str:
    """Every rank must hold the same target encoder; a digest of its bytes is compared across ranks."""
    digest = hashlib.sha256()
    for p in target.parameters():
        digest.update(p.detach().float().cpu().numpy().tobytes())
    digests = gather(digest.hexdigest()[:16])
    if len(set(digests)) != 1:
        raise TrainingError(f"ranks disagree at step {step}: target encoder digests {digests}")
    return digests[0]


def save_checkpoint(engine, ema, target, loader, cfg, step: int, out_dir: Path) -> Path:
    """Saves `step` from every rank (DeepSpeed's files, with the target encoder, every rank's loader and RNG state and
    the resolved config as client state); rank 0 then marks it complete and prunes the oldest."""
    ema.wait()
    digest = check_ranks_agree(target, step)

    ckpt_dir, tag = checkpoint_dir(out_dir), tag_for(step)
    client = {"step": step, "config": config_to_yaml(cfg), "target_encoder": target.state_dict(),
              "loader": gather(loader.state_dict()), "rng": gather(rng_state()),
              "world_size": dist.get_world_size()}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client)
    dist.barrier()
    if dist.get_rank() == 0:
        mark_complete(ckpt_dir, tag, step)
        for old in prune(ckpt_dir, cfg.checkpoint.keep_last):
            logger.info("removed old checkpoint %s", old)
        logger.info("saved checkpoint %s (ranks agree: target encoder digest %s)", ckpt_dir / tag, digest)
    dist.barrier()
    return ckpt_dir / tag


def load_checkpoint(engine, target, loader, resume: str, out_dir: Path) -> int:
    """Restores everything a checkpoint holds; returns its step (0 for a fresh start)."""
    found = resolve_resume(resume, out_dir)
    if found is None:
        logger.info("starting fresh (resume=%r found no checkpoint)", resume)
        return 0
    load_dir, tag = found
    try:
        path, client = engine.load_checkpoint(str(load_dir), tag=tag)
    except Exception as err:  # DeepSpeed/torch raise many types for damaged files; re-raised naming the checkpoint
        raise TrainingError(f"checkpoint {load_dir / tag} cannot be loaded ({type(err).__name__}: {err}); it may be "
                            f"corrupt: choose another one") from err
    if path is None or not client or "step" not in client:
        raise TrainingError(f"checkpoint {load_dir / tag} cannot be loaded: DeepSpeed found no model states in it")
    if client["world_size"] != dist.get_world_size():
        raise TrainingError(f"checkpoint {load_dir / tag} was written by {client['world_size']} ranks, this run has "
                            f"{dist.get_world_size()}: resume with the same number of processes")
    target.load_state_dict(client["target_encoder"])
    loader.load_state_dict(client["loader"][dist.get_rank()])
    set_rng_state(client["rng"][dist.get_rank()])
    logger.info("resumed from %s at step %d", load_dir / tag, client["step"])
    return client["step"]
