"""Values that follow from the config alone (never written in YAML): the patch grid and the training dtype. What also
needs the shards or the world size (global batch, steps per epoch, schedule lengths) is the run plan's
(training/plan.py)."""
from __future__ import annotations

from config.schema import Config


def grid_size(cfg: Config) -> tuple[int, int]:
    """Patches per side (H, W) of the square training crop."""
    side = cfg.data.crop_size // cfg.model.patch_size
    return side, side


def training_dtype(cfg: Config):
    """The torch dtype of the weights, activations and batches: bf16 or fp32 (optimization.precision)."""
    import torch

    return torch.bfloat16 if cfg.optimization.precision == "bf16" else torch.float32
