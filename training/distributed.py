"""Distributed set-up and the few collectives the loop uses: the process group (NCCL on GPUs, gloo on the CPU), a
world of one without a launcher, all-gathers of Python objects, agreement on a flag, DeepSpeed's /dev/shm buffers."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from training import TrainingError
from util.errors import UserError


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """`python train.py` without a launcher: a world of one (DeepSpeed would otherwise look for MPI)."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def setup_distributed(device_kind: str):
    """Initialises torch.distributed through DeepSpeed (NCCL on GPUs, gloo on the CPU); returns (device, rank, world).

    Args:
        device_kind: the config's run.device: auto (cuda when available), cpu or cuda.
    """
    import deepspeed
    import torch

    use_cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise TrainingError("run.device is cuda but no CUDA device is visible; set run.device: cpu or auto")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return device, torch.distributed.get_rank(), torch.distributed.get_world_size()


def gather(obj):
    """One object per rank → the list of all ranks' objects, on every rank."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(flag: bool, device) -> bool:
    """True on every rank when any rank says True (one small all-reduce, only on check steps)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def release_shm_buffers() -> None:
    """DeepSpeed's shared-memory all-reduce on the CPU leaves one buffer per rank in /dev/shm (66 MiB each, named
    after MASTER_ADDR, MASTER_PORT and the rank) when the process ends; unlink this rank's. Ranks that mapped it
    keep their mapping, so this is safe while others finish."""
    name = f"deepspeed_*_{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}_{os.environ.get('RANK')}"
    for path in Path("/dev/shm").glob(name):
        path.unlink(missing_ok=True)


def on_rank0(fn, *args):
    """Runs `fn(*args)` on rank 0 while the other ranks wait; returns its value there (None elsewhere). An error
    about the user's data or settings that it raises is raised on every rank, so no rank is left waiting in a
    collective for one that gave up."""
    import torch.distributed as dist

    value, message = None, None
    if dist.get_rank() == 0:
        try:
            value = fn(*args)
        except UserError as err:
            message = str(err)
    message = gather(message)[0]
    if message:
        raise TrainingError(message)
    return value
