"""Values that follow from the config alone (never written in YAML): the patch grid, the training dtype and the mask
sampler. What also needs the shards or the world size (global batch, steps per epoch, schedule lengths) is the run
plan's (training/plan.py)."""
from __future__ import annotations

import dataclasses

from config.sections import Config
from pipeline.masks.sampler import MultiBlockMaskSampler


def grid_size(cfg: Config) -> tuple[int, int]:
    """Patches per side (H, W) of the square training crop."""
    side = cfg.data.crop_size // cfg.model.patch_size
    return side, side


def training_dtype(cfg: Config):
    """The torch dtype of the weights, activations and batches: bf16 or fp32 (optimization.precision)."""
    import torch

    return torch.bfloat16 if cfg.optimization.precision == "bf16" else torch.float32


def mask_sampler(cfg: Config) -> MultiBlockMaskSampler:
    """The multiblock sampler of a config: the mask section, the crop and patch size, the run's seed."""
    return MultiBlockMaskSampler(input_size=cfg.data.crop_size, patch_size=cfg.model.patch_size, seed=cfg.run.seed,
                                 **dataclasses.asdict(cfg.mask))
