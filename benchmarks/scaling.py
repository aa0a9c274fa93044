"""Scaling suite: images/s per process of train.py with 1 and with 2 processes (the deepspeed launcher, the same
per-process batch) on the digits, and their ratio, measured in one run; then the model of 8-GPU and multi-node
efficiency (benchmarks/comm_model.py). On a CPU each process gets one thread; the figures come from train.py's own
interval lines after the first (docs/benchmarks.md).
"""
from __future__ import annotations

import re
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import run_train
from tools.digits import shard_digits

STEPS, EVERY = 60, 10
LINE = re.compile(r"step (\d+)/\d+ .*?\| ([\d.]+) img/s/GPU")


def _throughput(config: str, shards: Path, out: Path, nproc: int) -> float:
    """Median images/s per process over the interval lines after the first."""
    output = run_train(config, {"data.shards": shards, "run.out_dir": out, "optimization.max_steps": STEPS,
                                "logging.every_steps": EVERY, "checkpoint.every_steps": 100000,
                                "logging.diagnostics_every": 0, "data.backend": "torch", "data.num_workers": 0},
                       nproc=nproc, env={"OMP_NUM_THREADS": "1"})
    rates = [float(m.group(2)) for m in LINE.finditer(output) if int(m.group(1)) > EVERY]
    return statistics.median(rates)


def run(cfg=None, earlier: dict | None = None) -> dict:
    """Measures 1 vs 2 processes on the tiny recipe, then prints the multi-GPU model (benchmarks/comm_model.py) for
    `cfg`'s model, at the step time the step suite measured on a GPU in this run when it did."""
    import torch

    from benchmarks import comm_model

    config = "configs/tiny_cpu.yaml"  # the data here are 32 px digits: the tiny recipe whatever bench.py was given
    nproc = 2 if not torch.cuda.is_available() else min(2, torch.cuda.device_count())
    with tempfile.TemporaryDirectory() as tmp:
        shards = shard_digits(Path(tmp))["train"]
        one = _throughput(config, shards, Path(tmp) / "one", 1)
        many = _throughput(config, shards, Path(tmp) / "many", nproc)
    efficiency = many / one
    print(f"scaling ({config}, same per-process batch, {STEPS} steps, median of the intervals after the first):")
    print(f"  1 process: {one:.1f} img/s per process | {nproc} processes: {many:.1f} img/s per process "
          f"({nproc * many:.1f} in all) | per-process efficiency {100 * efficiency:.1f}%")
    measured = (earlier or {}).get("step", {}).get("ours", {}).get("step_time_s") if torch.cuda.is_available() else None
    model = comm_model.run(cfg, measured_step_s=measured) if cfg is not None else None
    return {"config": config, "processes": nproc, "one_process_images_per_s": one,
            "per_process_images_per_s": many, "efficiency": efficiency, "multi_gpu_model": model}
