"""What every benchmark suite shares: the device description and a timer."""
from __future__ import annotations

import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

from util.net import free_port

logger = logging.getLogger(__name__)


def device_info() -> dict:
    """Names the device and the library versions a figure was measured with."""
    import torch

    info = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "host": platform.node(),
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(),
            "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    else:
        info["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    for pkg in ("torch", "triton", "nvidia-dali-cuda120", "nvidia-dali-cuda130", "deepspeed", "webdataset", "timm"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def time_call(fn: Callable[[], object], repeat: int, warmup: int = 1) -> dict:
    """Wall-clock seconds per call of `fn`: median, min and max over `repeat` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "repeat": repeat}


def error_line(err: BaseException, limit: int = 300) -> str:
    """'<type>: <first line of the message>': what a benchmark row records when its case fails."""
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:limit]}"


def run_or_error(measure: Callable[[], dict], quiet: tuple[type[BaseException], ...] = ()) -> dict:
    """measure()'s figures, or {"error": "<type>: <first line>"} when it raises: one case that fails on this device
    (out of memory, a CUDA or compile error, a decoder the host lacks) costs its own row, not the suite's other rows.
    A `quiet` error is a setting the device cannot take (Triton on the CPU), said in one line; any other also logs
    its traceback, for the fix."""
    try:
        return measure()
    except quiet as err:
        return {"error": error_line(err)}
    except Exception as err:  # noqa: BLE001 -- not swallowed: the row carries it and the log has the traceback
        logger.exception("a benchmark case failed; the suite goes on with the next one")
        return {"error": error_line(err)}


WORLD = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # a process group's


def run_train(config: str, sets: dict, nproc: int = 1, env: dict | None = None, timeout: int = 900) -> str:
    """`deepspeed --num_gpus NPROC train.py --config CONFIG --set k=v ...` from the repository's root, as users run
    it; returns its output (stdout + stderr), or raises RuntimeError with the last lines when it fails. The launcher
    is `python -m deepspeed.launcher.runner`, the `deepspeed` script itself: a host with DeepSpeed on PYTHONPATH has
    no script. The launcher sets the world of its processes: this process's own (WORLD) is not passed on."""
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(nproc), "--master_port",
           str(free_port()), "train.py", "--config", str(config)]
    cmd += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    base = {k: v for k, v in os.environ.items() if k not in WORLD}
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          env={**base, "PYTHONUNBUFFERED": "1", **(env or {})}, timeout=timeout)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise RuntimeError(f"train.py on {nproc} process(es) exited with {proc.returncode}:\n{tail}")
    return output
