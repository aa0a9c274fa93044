"""Throughput benchmarks: each suite beside a reference measured in the same run, on the same device.

    python bench.py --config configs/tiny_cpu.yaml [--suite masks,shards] [--out results.json]
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import pkgutil
import sys
from pathlib import Path

import benchmarks
from benchmarks.common import device_info
from config import load_config
from util.cli import HelpFormatter
from util.errors import UserError
from util.processes import exit_without_teardown

# Suites in the order they run; a suite is a module benchmarks/<name>.py with run(cfg) -> dict (or
# run(cfg, earlier) -> dict to see the figures of the suites run before it). The others are helpers and scripts.
ORDER = ("shards", "masks", "data", "kernels", "step", "loop", "levers", "scaling")
NOT_SUITES = ("common", "comm_model", "aot_compile_check", "summary")


def available_suites() -> list[str]:
    present = {m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in NOT_SUITES}
    return [s for s in ORDER if s in present] + sorted(present - set(ORDER))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", default="configs/tiny_cpu.yaml", help="YAML config (this project's or official)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    p.add_argument("--suite", default=None, help=f"comma-separated suites (default: all of {available_suites()})")
    p.add_argument("--out", default=None, help="write every figure as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as err:  # the user's data or settings, named by the message
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, overrides=args.set)
    suites = available_suites() if args.suite is None else [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = [s for s in suites if s not in available_suites()]
    if unknown:
        print(f"error: unknown suite(s) {unknown}; available: {available_suites()}", file=sys.stderr)
        return 2
    if args.out and not Path(args.out).resolve().parent.is_dir():  # found now, not after the suites ran
        print(f"error: --out {args.out}: folder {Path(args.out).resolve().parent} does not exist", file=sys.stderr)
        return 2
    info = device_info()
    print(f"device: {info['device']} | torch {info['torch']} | triton {info['triton']} | "
          f"DALI {info['nvidia-dali-cuda120'] or info['nvidia-dali-cuda130']} | DeepSpeed {info['deepspeed']} | "
          f"{info['date']}")
    results = {"device": info, "config": args.config, "suites": {}}
    for name in suites:
        print(f"\n== {name} ==")
        suite = importlib.import_module(f"benchmarks.{name}").run
        earlier = {"earlier": results["suites"]} if "earlier" in inspect.signature(suite).parameters else {}
        try:
            results["suites"][name] = suite(cfg, **earlier)
        except UserError as err:
            err.args = (f"suite {name}: {err}",)  # the same error, naming the suite that met it
            raise
        if args.out:  # after every suite: a run stopped by a time limit keeps the suites that finished
            write_json(args.out, results)
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


def write_json(path: str, results: dict) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    exit_without_teardown(main())
