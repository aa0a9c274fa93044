"""Distributed set-up and the few collectives the loop uses: the process group (NCCL on GPUs, gloo on the CPU) with
the run's collective timeout, a world of one without a launcher, all-gathers of Python objects, agreement on flags,
DeepSpeed's /dev/shm buffers (this rank's removed at exit, dead runs' at the next start), and the one place its
JIT-built ops are cached (per environment)."""
from __future__ import annotations

import contextlib
import datetime
import io
import logging
import os
import sys
from pathlib import Path

from training import TrainingError
from util.errors import UserError
from util.net import free_port

logger = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 4 * 3600  # rank 0's one-off work the others wait for (a universal conversion of a ViT-g checkpoint)
SHM_PATTERN = "deepspeed_*"  # DeepSpeed's shared-memory all-reduce buffers (deepspeed/ops/csrc/cpu/comm/shm.cpp)
_setup_group = None  # a gloo group with SETUP_TIMEOUT_S, for on_rank0


def use_environment_op_cache() -> Path:
    """Points torch's extension cache at this environment (`<venv>/torch_extensions`) unless TORCH_EXTENSIONS_DIR is
    set, and builds with this environment's ninja (its bin folder first on PATH, as an activated venv has it); returns
    the cache. Torch keys ~/.cache/torch_extensions by the op's name only, so two checkouts or venvs sharing it would
    rebuild DeepSpeed's CPU communication op in turn; and one ninja reads another version's build log as stale, so a
    start whose PATH finds another ninja (the system's, or the venv's after `make demo`) would rebuild it too."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if (Path(bin_dir) / "ninja").is_file() and path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + path
    return Path(os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions")))


def quiet_cpu_start() -> None:
    """Without a GPU, a normal start says nothing about not finding one: DeepSpeed is told the accelerator
    (DS_ACCELERATOR=cpu, unless the user set it) instead of warning that it fell back to the CPU, and torch's note
    that no CUDA runtime goes with CUDA_HOME is not shown. With a GPU nothing changes."""
    import torch

    if torch.cuda.is_available():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@contextlib.contextmanager
def without_op_notes():
    """Holds back what DeepSpeed prints on stdout while it sets up (its "<op> built successfully" on the CPU) and
    passes on every other line."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        yield
    kept = [line for line in out.getvalue().splitlines() if not line.endswith("built successfully")]
    if kept:
        print("\n".join(kept))


def build_ops() -> None:
    """`make install`: builds, into this environment's cache, the DeepSpeed ops a CPU run loads at its first start
    (its shared-memory all-reduce); on a GPU machine there is none to build."""
    use_environment_op_cache()
    quiet_cpu_start()
    from deepspeed.accelerator import get_accelerator

    op = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if op is not None and op.is_compatible():
        op.load()


def single_process_env() -> None:
    """`python train.py` without a launcher: a world of one (DeepSpeed would otherwise look for MPI)."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))


def setup_distributed(device_kind: str, timeout_s: float = 600.0):
    """Initialises torch.distributed through DeepSpeed (NCCL on GPUs, gloo on the CPU); returns (device, rank, world).

    Args:
        device_kind: the config's run.device: auto (cuda when available), cpu or cuda.
        timeout_s: how long a collective waits for the other ranks before it fails (run.timeout_s; the libraries'
            default is 30 minutes of GPU-hours burned in silence when a rank hangs).
    """
    global _setup_group
    use_environment_op_cache()
    quiet_cpu_start()
    import deepspeed
    import torch

    use_cuda = device_kind == "cuda" or (device_kind == "auto" and torch.cuda.is_available())
    if device_kind == "cuda" and not torch.cuda.is_available():
        raise TrainingError("run.device is cuda but no CUDA device is visible; set run.device: cpu or auto")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        local_rank = cuda_index(local_rank, torch.cuda.device_count())
        torch.cuda.set_device(local_rank)
    with without_op_notes():
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo",
                                   timeout=datetime.timedelta(seconds=timeout_s))
    _setup_group = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=SETUP_TIMEOUT_S))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return device, torch.distributed.get_rank(), torch.distributed.get_world_size()


def cuda_index(local_rank: int, visible: int) -> int:
    """The GPU of a rank among those it sees: the LOCAL_RANK-th, or the only one when the scheduler shows each rank
    just its own (`srun --gpus-per-task=1`, Slurm's per-task CUDA_VISIBLE_DEVICES)."""
    if visible == 1:
        return 0
    if local_rank < visible:
        return local_rank
    raise TrainingError(f"LOCAL_RANK {local_rank} but this process sees {visible} GPU(s) (CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start one rank per GPU (srun "
                        f"--ntasks-per-node = --gpus-per-node, or --gpus-per-task=1)")


def gather(obj, group=None):
    """One object per rank → the list of all ranks' objects, on every rank."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=group)
    return out


def any_rank(flags: tuple[bool, ...], device) -> tuple[bool, ...]:
    """Each flag True on every rank when any rank says True (one small all-reduce, only on check steps)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def release_shm_buffers() -> None:
    """DeepSpeed's shared-memory all-reduce on the CPU leaves one buffer per rank in /dev/shm (66 MiB each, named
    after MASTER_ADDR, MASTER_PORT and the rank) when the process ends; unlink this rank's. Ranks that mapped it
    keep their mapping, so this is safe while others finish."""
    name = f"deepspeed_*_{os.environ.get('MASTER_ADDR')}_{os.environ.get('MASTER_PORT')}_{os.environ.get('RANK')}"
    for path in Path("/dev/shm").glob(name):
        path.unlink(missing_ok=True)


def remove_dead_shm_buffers(shm: Path = Path("/dev/shm"), proc: Path = Path("/proc")) -> list[Path]:
    """Removes DeepSpeed's /dev/shm buffers of this user that no process holds open or maps any more (left by ranks
    killed with SIGKILL, 66 MiB each), whatever their age; returns them. DeepSpeed opens a rank's buffer as it creates
    it (shm_open with O_CREAT) and keeps the descriptor and the mapping for the whole run, so a live run's buffers,
    one being created this instant included, are never touched; a job killed and started again at once gets its dead
    buffers removed."""
    uid = os.getuid()
    candidates = []
    for path in shm.glob(SHM_PATTERN):  # listed before /proc is read: a buffer made after this is no candidate
        try:
            if path.stat().st_uid == uid:
                candidates.append(path)
        except OSError:
            continue
    if not candidates:
        return []
    held = shm_files_held(shm, proc)
    dead = [p for p in candidates if str(p) not in held]
    for path in dead:
        path.unlink(missing_ok=True)
    return dead


def shm_files_held(shm: Path, proc: Path) -> set[str]:
    """The paths under `shm` that a process holds open (/proc/PID/fd) or maps (/proc/PID/maps). Processes that end
    meanwhile, or another user's (which cannot open this user's 0600 buffers), are passed over."""
    held, prefix = set(), str(shm) + "/"
    for pid in proc.glob("[0-9]*"):
        try:
            for fd in os.scandir(pid / "fd"):
                try:
                    target = os.readlink(fd.path)
                except OSError:  # closed meanwhile
                    continue
                if target.startswith(prefix):
                    held.add(target.removesuffix(" (deleted)"))
            text = (pid / "maps").read_text()
        except OSError:
            continue
        held.update(line.split(None, 5)[-1] for line in text.splitlines() if prefix in line)
    return held


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
    message = gather(message, _setup_group)[0]  # the others may wait long: a universal conversion
    if message:
        raise TrainingError(message)
    return value
