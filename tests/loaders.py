"""The training loader of a config as train.py builds it (its run plan, then the loader of one rank), for the tests of
the data pipeline.

    from loaders import training_loader
    loader = training_loader(cfg, rank=0, world_size=1, device=torch.device("cpu"))
"""
from __future__ import annotations

import torch

from training.loop import build_training_loader
from training.plan import plan_run


def training_loader(cfg, rank: int = 0, world_size: int = 1, device: torch.device = torch.device("cpu"),
                    dtype: torch.dtype | None = None):
    return build_training_loader(cfg, plan_run(cfg, world_size), rank, device, dtype)
