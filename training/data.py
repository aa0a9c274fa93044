"""The data the training step consumes, wired from the config: the multiblock mask sampler and the loader of a rank
(pipeline/ receives these values; it never reads the config itself)."""
from __future__ import annotations

import dataclasses

import torch

from config import Config, training_dtype
from pipeline.loader import Loader, build_loader
from pipeline.masks import MultiBlockMaskSampler
from training.plan import RunPlan


def mask_sampler(cfg: Config) -> MultiBlockMaskSampler:
    """The multiblock sampler of a config: the mask section, the crop and patch size, the run's seed."""
    return MultiBlockMaskSampler(input_size=cfg.data.crop_size, patch_size=cfg.model.patch_size, seed=cfg.run.seed,
                                 **dataclasses.asdict(cfg.mask))


def build_training_loader(cfg: Config, plan: RunPlan, rank: int, device: torch.device,
                          dtype: torch.dtype | None = None) -> Loader:
    """The loader of `rank` in the run `plan` (training.plan.plan_run: its batch layout, manifest and backend);
    images in the training dtype unless `dtype` is given."""
    return build_loader(cfg.data, mask_sampler(cfg), seed=cfg.run.seed, rank=rank, layout=plan.layout,
                        manifest=plan.manifest, backend=plan.backend, device=device, dtype=dtype or training_dtype(cfg))
