"""Values that follow from the config (never written in YAML): patch grid, global batch, iterations per epoch, schedule
lengths, the training dtype and DeepSpeed's config dict."""
from __future__ import annotations

from config.errors import ConfigError
from config.schema import Config


def grid_size(cfg: Config) -> tuple[int, int]:
    """Patches per side (H, W) of the square training crop."""
    side = cfg.data.crop_size // cfg.model.patch_size
    return side, side


def global_batch_size(cfg: Config, world_size: int) -> int:
    return cfg.data.batch_size * cfg.optimization.grad_accum * world_size


def iterations_per_epoch(cfg: Config, world_size: int, num_samples: int) -> int:
    """Optimizer steps per epoch over `num_samples` (from the shard manifest); the last partial batch is dropped."""
    ipe = num_samples // global_batch_size(cfg, world_size)
    if ipe < 1:
        raise ConfigError(f"{num_samples} samples make no full global batch of {global_batch_size(cfg, world_size)} "
                          f"(data.batch_size x optimization.grad_accum x {world_size} ranks): use more data or a "
                          f"smaller data.batch_size")
    return ipe


def schedule_steps(cfg: Config, ipe: int) -> tuple[int, int]:
    """(warmup steps, total schedule steps) of the lr, weight-decay and momentum schedules."""
    opt = cfg.optimization
    warmup, total = int(opt.warmup_epochs * ipe), int(opt.epochs * ipe * opt.ipe_scale)
    if total < 1:  # the schedules divide by it, and a run of 0 steps would end at once with exit code 0
        raise ConfigError(f"optimization.epochs {opt.epochs} x {ipe} iterations per epoch x optimization.ipe_scale "
                          f"{opt.ipe_scale} gives {total} schedule steps; raise optimization.ipe_scale or epochs")
    return warmup, total


def training_dtype(cfg: Config):
    """The torch dtype of the weights, activations and batches: bf16 or fp32 (optimization.precision)."""
    import torch

    return torch.bfloat16 if cfg.optimization.precision == "bf16" else torch.float32


def deepspeed_config(cfg: Config, world_size: int) -> dict:
    """The DeepSpeed config dict: batch and precision keys derived here, the deepspeed section merged over them.

    Three DeepSpeed defaults are replaced, each costing every step and none asked for by the recipe:
    - gradient_clipping 0: the official recipe does not clip; DeepSpeed's default (1.0) clips at global norm 1.
    - bf16.check_grad_overflow false: the per-gradient inf/NaN scan ends in a host sync every step and only skips
      a step silently; train.py stops on a non-finite loss instead and never saves non-finite weights.
    - zero_optimization.compute_grad_norm false (ZeRO-2 without clipping): nothing reads the norm, yet it costs a
      norm per gradient and two collectives per step.
    gradient_clipping and zero_optimization.compute_grad_norm set in the deepspeed section win.
    """
    derived = {
        "train_batch_size": global_batch_size(cfg, world_size),
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optimization.grad_accum,
        "bf16": {"enabled": cfg.optimization.precision == "bf16", "check_grad_overflow": False},
        "gradient_clipping": 0.0,
        "steps_per_print": 10**9,  # train.py logs; DeepSpeed's own per-step print would duplicate it
    }
    out = _merge(derived, cfg.deepspeed)
    zero = out.get("zero_optimization", {})
    if zero.get("stage", 0) == 2 and not out["gradient_clipping"] and "compute_grad_norm" not in zero:
        out["zero_optimization"] = {**zero, "compute_grad_norm": False}  # DeepSpeed allows it at stage 2 only here
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
