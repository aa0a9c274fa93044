"""The target encoder: an fp32 exponential moving average of the context encoder, updated in one fused pass.

The master copy is fp32 whatever the training precision: under bf16 a bf16 target would drop every update smaller
than 1/256 of a weight, and with momentum ≥ 0.996 most updates are that small.
"""
from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch
import torch.nn as nn


def make_target_encoder(context_encoder: nn.Module) -> nn.Module:
    """An fp32, gradient-free copy of the context encoder."""
    target = copy.deepcopy(context_encoder).float()
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: Sequence[torch.Tensor], source: Iterable[torch.Tensor], momentum: float) -> None:
    """target ← m·target + (1 − m)·source, for every pair, in one foreach launch (source upcast to the target dtype)."""
    target = list(target)
    source = [s.detach().to(t.dtype) for s, t in zip(source, target, strict=True)]
    torch._foreach_lerp_(target, source, 1.0 - momentum)
