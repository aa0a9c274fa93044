"""Loop suite: train.py as users run it (the deepspeed launcher, the loader on generated ImageNet-like shards, the
config's model and DeepSpeed settings, a checkpoint at the end) for a few logged intervals. Its own step log's
figures (the CSV monitor: images/s per GPU, MFU, data wait, peak memory; median of the intervals after the first)
beside the step suite's "ours", measured in the same bench run: the step suite's figure when it ran before this one
(`--suite step,loop`), else timed here. They should agree within a few percent; a gap is data wait, logging or
something the step suite does not see.

    python bench.py --config configs/vith14_in1k.yaml --suite step,loop
"""
from __future__ import annotations

import csv
import dataclasses
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import error_line, run_train
from benchmarks.data import make_shards
from benchmarks.step import OurStep, time_path, try_path
from config import config_to_yaml
from training.distributed import setup_distributed, single_process_env

STEPS = {"cuda": (40, 10), "cpu": (12, 3)}  # device → (steps, logging interval)
FIGURES = ("images_per_s", "mfu", "data_wait_s", "step_time_s", "peak_gb")


def launch(cfg, shards: Path, out: Path, steps: int, every: int) -> None:
    """train.py (benchmarks/common.py run_train) on `cfg`, written as YAML, and `shards` for `steps` steps; its
    interval lines go into this suite's output."""
    config = out.parent / "loop.yaml"
    config.write_text(config_to_yaml(cfg))
    output = run_train(str(config), {"data.shards": shards, "run.out_dir": out, "optimization.max_steps": steps,
                                     "logging.every_steps": every, "checkpoint.every_steps": 100_000,
                                     "logging.diagnostics_every": 0, "logging.tensorboard": "false",
                                     "logging.csv": "true"}, timeout=600)
    print("\n".join(line for line in output.splitlines() if " img/s/GPU " in line or "summary:" in line))


def logged(out: Path, name: str, every: int) -> dict:
    """Median of each Perf figure over the logged intervals after the first (the first holds the warm-up and the
    counted step), from train.py's CSV monitor."""
    figures = {}
    for figure in FIGURES:
        path = out / "logs" / name / f"Perf_{figure}.csv"
        if not path.exists():  # MFU off a known GPU: never written
            figures[figure] = None
            continue
        with open(path) as f:
            values = [float(row[1]) for row in csv.reader(f) if row and row[0] != "step" and int(row[0]) > every]
        figures[figure] = statistics.median(values) if values else None
    return figures


def run(cfg, earlier: dict | None = None) -> dict:
    single_process_env()
    device, _, world_size = setup_distributed(cfg.run.device)
    steps, every = STEPS[device.type]
    step_suite = (earlier or {}).get("step", {}).get("ours")
    if step_suite and "images_per_s" in step_suite:
        bench, source = step_suite, "the step suite's 'ours' in this run"
    else:
        ours = dataclasses.asdict(cfg.kernels)
        bench, source = try_path(lambda: time_path(OurStep, cfg, device, world_size, ours), device), "ours, timed here"
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        # one epoch holds every step: an epoch boundary every few steps would charge the loader's restarts to the log
        shards = make_shards(Path(tmp), n=steps * cfg.data.batch_size)
        try:
            launch(cfg, shards, Path(tmp) / "run", steps, every)
        except RuntimeError as err:  # train.py failed on this device: its output's tail, and a row that says so
            print(f"loop: {err}")
            return {"steps": steps, "every": every, "error": error_line(err), "bench_source": source}
        log = logged(Path(tmp) / "run", cfg.run.name, every)
    print(f"loop: train.py ({cfg.model.arch}, batch {cfg.data.batch_size}, {steps} steps on {device.type}, median of "
          f"the {every}-step intervals after the first) beside {source}")
    print(f"  {'':<34}{'img/s/GPU':>11}{'MFU':>8}{'data wait s':>13}{'peak GiB':>10}")
    mfu = f"{100 * log['mfu']:.1f}%" if log["mfu"] is not None else "n/a"
    print(f"  {'train.py step log':<34}{log['images_per_s']:>11.1f}{mfu:>8}{log['data_wait_s']:>13.4f}"
          f"{log['peak_gb']:>10.2f}")
    if "images_per_s" in bench:
        ratio = log["images_per_s"] / bench["images_per_s"]
        bench_mfu = f"{100 * bench['mfu']:.1f}%" if bench.get("mfu") else "n/a"
        print(f"  {'bench step (reference)':<34}{bench['images_per_s']:>11.1f}{bench_mfu:>8}  → the log is "
              f"{ratio:.2f}× the bench")
    else:
        ratio = None
        print(f"  bench step failed: {bench['error']}")
    return {"steps": steps, "every": every, "train_log": log, "bench": {k: bench.get(k) for k in (
        "images_per_s", "mfu", "error")}, "bench_source": source, "log_vs_bench": ratio}
