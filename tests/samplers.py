"""Mask samplers the tests draw from: the sampler at the project's grids (`make`), the tiny config's sampler on its
8×8 grid (`tiny_sampler`), and a digest of what one sample drew (the same masks in any process give the same digest).

    from samplers import GRID, digest, make, tiny_sampler
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch

from config import load_config
from pipeline.masks.sampler import MultiBlockMaskSampler

GRIDS = {"16x16": (224, 14), "14x14": (224, 16), "28x28": (448, 16), "14x7": ((224, 112), 16)}
GRID = (8, 8)  # the tiny config's: 32 px crops of 4 px patches


def make(grid: str = "16x16", **kwargs) -> MultiBlockMaskSampler:
    input_size, patch = GRIDS[grid]
    return MultiBlockMaskSampler(input_size=input_size, patch_size=patch, **kwargs)


def digest(ctx: torch.Tensor, tgt: torch.Tensor) -> str:
    return hashlib.sha256(ctx.numpy().tobytes() + b"|" + tgt.numpy().tobytes()).hexdigest()


def tiny_sampler(seed: int = 0) -> MultiBlockMaskSampler:
    cfg = load_config("configs/tiny_cpu.yaml")
    return MultiBlockMaskSampler(input_size=32, patch_size=4, seed=seed, **dataclasses.asdict(cfg.mask))
