"""Multi-head self-attention without a mask: softmax(q kᵀ / sqrt(d)) v."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q, k, v (B, H, N, d) → (B, H, N, d). PyTorch's SDPA picks the fastest backend for the device."""
    return F.scaled_dot_product_attention(q, k, v)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit softmax attention, as the official I-JEPA code computes it."""
    scale = q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N)
    return attn.softmax(dim=-1) @ v
