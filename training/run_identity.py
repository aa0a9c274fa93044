"""What a resumed run must share with the run that wrote its checkpoint: the data, the batch and the schedule.

A checkpoint records this identity (in `run.json` beside DeepSpeed's files); a resume compares it with its own and
refuses any difference by name unless told the change is meant (`train.py --accept-changes`). Settings that do not
change what is computed (workers, prefetch, logging, checkpoint cadence, max_steps, kernels, compile) are not in it.
"""
from __future__ import annotations

import dataclasses

from config import Config, global_batch_size

# Per section: the keys whose change alters the samples, the batch, the objective or the schedule (None = all keys).
IDENTITY_KEYS = {
    "run": ("seed",),
    "data": ("batch_size", "crop_size", "crop_scale", "crop_ratio", "shuffle_buffer"),
    "mask": None,
    "model": ("arch", "patch_size", "embed_dim", "depth", "num_heads", "pred_depth", "pred_emb_dim",
              "pred_num_heads"),
    "optimization": ("epochs", "warmup_epochs", "ipe_scale", "start_lr", "lr", "final_lr", "weight_decay",
                     "final_weight_decay", "betas", "eps", "grad_accum", "precision"),
    "ema": ("momentum",),
}


def run_identity(cfg: Config, world_size: int, backend: str, shards_plan: str, num_samples: int, steps_per_epoch: int,
                 warmup: int, total: int) -> dict:
    """A flat {name: plain value} of everything a resume must keep (lists for pairs, so it survives JSON)."""
    out = {}
    for section, keys in IDENTITY_KEYS.items():
        values = dataclasses.asdict(getattr(cfg, section))
        for key in keys or values:
            value = values[key]
            out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    out.update({
        "data.backend (resolved)": backend,
        "data.shards (the manifest's plan digest)": shards_plan,
        "data: samples in the shards": num_samples,
        "world size": world_size,
        "global batch size": global_batch_size(cfg, world_size),
        "schedule: steps per epoch": steps_per_epoch,
        "schedule: warmup steps": warmup,
        "schedule: total steps": total,
    })
    return out


def differences(saved: dict, current: dict) -> dict[str, str]:
    """{name: 'name: saved → current'} for every entry that differs (an entry only one side has counts as a
    difference), in the saved identity's order."""
    out = {}
    for name in [*saved, *(k for k in current if k not in saved)]:
        old, new = saved.get(name, "(absent)"), current.get(name, "(absent)")
        if old != new:
            out[name] = f"{name}: {old} → {new}"
    return out
