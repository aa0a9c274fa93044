"""Levers suite: train.py's step as the config has it, then with one lever changed at a time, each beside the
official-style reference measured in the same run. One table: lever → images/s per GPU → × the config's step → × the
reference, and whether it won (≥ 2% faster: a smaller gain is within run-to-run noise on a GPU).

A lever is a list of `--set` overrides, so the winner goes into the config as it is printed. IJEPA_LEVERS picks the
levers of one round by name (comma-separated; default: every lever but the compiled ones, which pay their compile
inside the round's minutes; a name holds no comma). A lever the device cannot take (Triton on the CPU), or one that
fails there (out of memory, a CUDA error, a compile error), is a row that says so, and the round goes on.

    IJEPA_LEVERS="static shapes,ZeRO-1" python bench.py --config configs/vith14_in1k.yaml --suite levers
"""
from __future__ import annotations

import dataclasses
import os

from benchmarks.step import OurStep, ReferenceStep, reference_kernels, time_path, try_path
from config import ConfigError, with_overrides
from training.distributed import setup_distributed, single_process_env

LEVERS: dict[str, list[str]] = {
    "the config": [],
    "static shapes": ["mask.length_policy=fixed"],
    "Triton attention": ["kernels.attention=triton"],
    "Triton gather": ["kernels.gather=triton"],
    "Triton attention + gather": ["kernels.attention=triton", "kernels.gather=triton"],
    "SDPA cuDNN first": ["kernels.attention=sdpa-cudnn"],
    "ZeRO-1": ["deepspeed.zero_optimization.stage=1"],
    "ZeRO-2 without overlap_comm": ["deepspeed.zero_optimization.overlap_comm=false"],
    "no ZeRO": ["deepspeed.zero_optimization.stage=0"],
    "ZeRO-2 with 500M buckets": ["deepspeed.zero_optimization.reduce_bucket_size=500000000",
                                 "deepspeed.zero_optimization.allgather_bucket_size=500000000"],
    "ZeRO-2 without contiguous gradients": ["deepspeed.zero_optimization.contiguous_gradients=false"],
    "activation checkpointing": ["model.activation_checkpointing=true"],
    "batch 256": ["data.batch_size=256"],
    "activation checkpointing + batch 512": ["model.activation_checkpointing=true", "data.batch_size=512"],
    "compiled blocks": ["model.compile=true"],
    "compiled blocks + static shapes": ["model.compile=true", "mask.length_policy=fixed"],
    "compiled blocks + CUDA graphs + static shapes": ["model.compile=true", "model.compile_mode=reduce-overhead",
                                                      "mask.length_policy=fixed"],
}
COMPILED = {name for name, sets in LEVERS.items() if "model.compile=true" in sets}
WIN = 1.02  # × the config's step


def chosen_levers() -> list[str]:
    asked = os.environ.get("IJEPA_LEVERS")
    if not asked:
        return [name for name in LEVERS if name not in COMPILED]
    names = [n.strip() for n in asked.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        raise ConfigError(f"IJEPA_LEVERS: unknown lever(s) {unknown}; the levers are {list(LEVERS)}")
    return ["the config"] + [n for n in names if n != "the config"]  # the config's step is what each is compared to


def run(cfg) -> dict:
    names = chosen_levers()  # before anything is built: a misspelt lever fails at once
    single_process_env()
    device, _, world_size = setup_distributed(cfg.run.device)
    print(f"levers: {cfg.model.arch} patch {cfg.model.patch_size}, batch {cfg.data.batch_size} (where the lever "
          f"keeps it), on {device.type}; the official-style reference at the config's batch, measured first")
    ref = try_path(lambda: time_path(ReferenceStep, cfg, device, world_size, reference_kernels()), device)
    print(f"{'reference (official-style)':<44}" + (f"{ref['images_per_s']:>11.1f}" if "images_per_s" in ref
                                                   else f" failed: {ref['error'][:200]}"))
    print(f"{'lever':<44}{'img/s/GPU':>11}{'× config':>10}{'× ref':>8}{'peak GiB':>10}  verdict  (--set ...)",
          flush=True)
    rows = {}
    for name in names:  # each row printed when measured: a round stopped by its cap keeps the rows it measured
        rows[name] = try_path(lambda: time_lever(cfg, name, device, world_size), device)
        rows[name]["sets"] = LEVERS[name]
        print_row(name, rows[name], rows["the config"], ref)
    return {"reference (official-style)": ref, "levers": rows}


def time_lever(cfg, name: str, device, world_size: int) -> dict:
    """train.py's step on `cfg` with the lever's overrides, timed as the step suite times it."""
    lever_cfg = with_overrides(cfg, LEVERS[name], source="levers")
    return time_path(OurStep, lever_cfg, device, world_size, dataclasses.asdict(lever_cfg.kernels))


def print_row(name: str, r: dict, base: dict, ref: dict) -> None:
    """One lever's line; adds its ratios to the config's step and the reference, and its verdict, to `r`."""
    if "error" in r:
        print(f"{name:<44}{'n/a':>11}{'':>10}{'':>8}{'':>10}  n/a: {r['error'][:200]}", flush=True)
        return
    ratio = r["images_per_s"] / base["images_per_s"] if "images_per_s" in base else float("nan")
    r["vs_config"] = ratio
    r["vs_reference"] = r["images_per_s"] / ref["images_per_s"] if "images_per_s" in ref else float("nan")
    r["won"] = name != "the config" and ratio >= WIN
    mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
    verdict = "—" if name == "the config" else ("keep" if r["won"] else "drop")
    print(f"{name:<44}{r['images_per_s']:>11.1f}{ratio:>9.2f}×{r['vs_reference']:>7.2f}×{mem:>10}  {verdict:<7}  "
          f"{' '.join(r['sets'])}", flush=True)
