"""What every benchmark suite shares: the device description and a timer."""
from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from importlib import metadata
from typing import Callable

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
