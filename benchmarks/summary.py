"""The summary of a benchmark results folder (the bench_<suite>.json files of benchmarks/gpu_check.sh), and the GPU
figures table generated from the committed results.

    python benchmarks/summary.py OUT_DIR                     # the table gpu_check.sh prints last
    python benchmarks/summary.py --markdown RESULTS_DIR...   # results.md's GPU table; a figure never measured is
                                                             # written "not measured"
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STEP_ROWS = ("reference (official-style)", "ours", "ours, static shapes (fixed lengths)")
DATA_ROWS = ("reference (wds + PIL + torchvision, 2 workers)", "torch gpu decode (nvJPEG)", "dali gpu (mixed)")
NOT_MEASURED = "not measured"


def load(folder: Path) -> tuple[dict, dict]:
    """(device info, {suite: figures}) from every bench_<suite>.json in `folder`."""
    device, suites = {}, {}
    for path in sorted(folder.glob("bench_*.json")):
        results = json.loads(path.read_text())
        device = device or results.get("device", {})
        suites.update(results.get("suites", {}))
    return device, suites


def step_lines(step: dict) -> list[str]:
    ref = step.get(STEP_ROWS[0], {}).get("images_per_s")
    lines = []
    for name, r in step.items():
        if "error" in r:
            lines.append(f"step    {name:<38} failed: {r['error'][:100]}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") is not None else "n/a"
        ratio = f"{r['images_per_s'] / ref:.2f}x ref" if ref else "no ref"
        syncs = "" if r.get("host_syncs_per_step") is None else f"  host syncs {r['host_syncs_per_step']}"
        lines.append(f"step    {name:<38} {r['images_per_s']:8.1f} img/s/GPU  MFU {mfu:>6}  {ratio}  peak {mem}  "
                     f"GPU-h for the config's epochs {r.get('gpu_hours_for_epochs', float('nan')):.3g}{syncs}")
    return lines


def kernel_lines(suite: dict) -> list[str]:
    """Per case: each implementation's fwd+bwd rate (fwd where there is no backward) and its ratio to the reference."""
    lines, by_case = [], {}
    for r in suite.get("rows", []):
        by_case.setdefault(r["case"], []).append(r)
    for case, rows in by_case.items():
        unit = "GB/s" if rows[0]["unit"] == "B" else "TFLOP/s"
        key = "fwd_bwd_rate" if any("fwd_bwd_rate" in r for r in rows) else "fwd_rate"
        cells = [f"{r['impl']} {r[key]:.2f}" if key in r else f"{r['impl']} failed ({r.get('error', '?')[:40]})"
                 for r in rows]
        lines.append(f"kernel  {case:<38} {key.replace('_rate', '')} {unit}: " + ", ".join(cells))
    if suite.get("copy_GBps"):
        lines.append(f"kernel  device-to-device copy: {suite['copy_GBps']:.0f} GB/s (read + write); auto picks "
                     f"{suite.get('auto')}")
    return lines


def data_lines(suite: dict) -> list[str]:
    lines = [f"data    {name:<48} {r['images_per_s']:8.0f} img/s  {r['vs_reference']:.2f}x ref"
             if "vs_reference" in r else f"data    {name:<48} failed: {r.get('error', 'no reference')[:100]}"
             for name, r in suite.get("results", {}).items()]
    for name, rates in suite.get("dali_stages", {}).items():
        if "error" in rates:
            lines.append(f"data    {name} cut after each stage: failed: {rates['error'][:100]}")
            continue
        lines.append(f"data    {name} cut after each stage: " + " → ".join(f"{k} {v:,.0f}" for k, v in rates.items()))
    return lines


def lever_lines(suite: dict) -> list[str]:
    lines = []
    for name, r in suite.get("levers", {}).items():
        if "error" in r:
            lines.append(f"lever   {name:<44} n/a: {r['error'][:80]}")
        else:
            verdict = "" if name == "the config" else ("keep" if r.get("won") else "drop")
            lines.append(f"lever   {name:<44} {r['images_per_s']:8.1f} img/s/GPU  {r.get('vs_config', 0):.2f}x config  "
                         f"{r.get('vs_reference', 0):.2f}x ref  {verdict}")
    return lines


def loop_lines(suite: dict) -> list[str]:
    """train.py's own step log beside the bench step it should agree with."""
    if not suite:
        return []
    if "error" in suite:
        return [f"loop    train.py failed: {suite['error'][:100]}"]
    log, bench = suite["train_log"], suite["bench"]
    mfu = f"MFU {100 * log['mfu']:.1f}%" if log.get("mfu") is not None else "MFU n/a"
    versus = (f"{suite['log_vs_bench']:.2f}x the bench step ({bench['images_per_s']:.1f} img/s/GPU)"
              if suite.get("log_vs_bench") else f"bench step failed: {bench.get('error')}")
    return [f"loop    train.py step log {log['images_per_s']:8.1f} img/s/GPU  {mfu}  data wait "
            f"{log['data_wait_s']:.4f} s/step  {versus}"]


def summary(folder: Path) -> str:
    device, suites = load(folder)
    if not suites:
        return f"no bench_*.json in {folder}: no suite finished"
    lines = [f"{device.get('device', '?')} | torch {device.get('torch')} | triton {device.get('triton')} | "
             f"{device.get('date', '')}"]
    lines += step_lines(suites.get("step", {})) + kernel_lines(suites.get("kernels", {}))
    lines += data_lines(suites.get("data", {})) + loop_lines(suites.get("loop", {}))
    lines += lever_lines(suites.get("levers", {}))
    missing = [s for s in ("step", "kernels", "data") if s not in suites]
    if missing:
        lines.append(f"not measured (no JSON): {', '.join(missing)}")
    return "\n".join(lines)


def data_cell(r: dict | None) -> str:
    if r is None:
        return NOT_MEASURED
    return f"{r['images_per_s']:,.0f} img/s" if "images_per_s" in r else f"failed ({r['error'][:60]})"


def markdown(folders: list[Path]) -> str:
    """results.md's GPU figures table: a column per results folder (card and date), every row named, measured or not."""
    columns = [load(f) for f in folders]
    head = [f"{d.get('device', '?')}, {d.get('date', '?')[:10]}" for d, _ in columns]
    rows = []
    for name in STEP_ROWS:
        cells = []
        for _, s in columns:
            r = s.get("step", {}).get(name, {})
            ref = s.get("step", {}).get(STEP_ROWS[0], {})
            if "images_per_s" in r and "images_per_s" in ref:
                cells.append(f"{r['images_per_s']:.0f} img/s, {r['images_per_s'] / ref['images_per_s']:.2f}× ref"
                             + (f", MFU {100 * r['mfu']:.0f}%" if r.get("mfu") else ""))
            else:
                cells.append(f"failed ({r['error'][:60]})" if "error" in r else NOT_MEASURED)
        rows.append((f"training step: {name}", cells))
    for name in DATA_ROWS:
        cells = [data_cell(s.get("data", {}).get("results", {}).get(name)) for _, s in columns]
        rows.append((f"data: {name}", cells))
    out = ["| figure | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    out += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--markdown", action="store_true", help="benchmarks/results.md's GPU table instead of the summary")
    args = p.parse_args(argv)
    absent = [str(f) for f in args.folders if not f.is_dir()]
    if absent:
        print(f"error: not a folder: {', '.join(absent)}", file=sys.stderr)
        return 2
    print(markdown(args.folders) if args.markdown else "\n\n".join(summary(f) for f in args.folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
