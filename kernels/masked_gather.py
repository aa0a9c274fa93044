"""Masked-token gather: out[m·B + b, i, :] = x[b, idx[m, b, i], :] (+ pos[idx[m, b, i], :])."""
from __future__ import annotations

from typing import Optional

import torch


def _check(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    if x.dim() != 3:
        raise ValueError(f"masked_gather: x must be (B, N, D), got shape {tuple(x.shape)}")
    if idx.dim() == 2:
        idx = idx.unsqueeze(0)  # one mask: (B, K) → (1, B, K)
    if idx.dim() != 3 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"masked_gather: idx must be an int32/int64 (M, B, K) or (B, K) tensor, "
                         f"got {idx.dtype} of shape {tuple(idx.shape)}")
    if x.shape[0] not in (1, idx.shape[1]):
        raise ValueError(f"masked_gather: x has batch {x.shape[0]} but idx has batch {idx.shape[1]} (x may have "
                         f"batch 1 to be shared by every row)")
    if pos is not None and (pos.dim() != 2 or pos.shape != x.shape[1:]):
        raise ValueError(f"masked_gather: pos must be (N, D) = {tuple(x.shape[1:])}, got {tuple(pos.shape)}")
    return idx


def masked_gather_reference(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (B, N, D) or (1, N, D) shared by the batch; idx (M, B, K) or (B, K); pos (N, D) → (M·B, K, D), mask-major."""
    idx = _check(x, idx, pos)
    m, b, k = idx.shape
    n, d = x.shape[1:]
    rows = torch.arange(b, device=idx.device).view(1, b, 1) * (n if x.shape[0] == b else 0)
    flat = (idx.long() + rows).reshape(-1)  # (M·B·K,) rows of x viewed as (B·N, D)
    out = x.reshape(-1, d).index_select(0, flat)  # backward is index_add: repeated indices accumulate
    if pos is not None:
        out = out + pos.index_select(0, idx.reshape(-1).long())
    return out.view(m * b, k, d)


def masked_gather(x: torch.Tensor, idx: torch.Tensor, pos: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The model's one gather entry point (see masked_gather_reference for the contract)."""
    return masked_gather_reference(x, idx, pos)
