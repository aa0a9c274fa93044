"""The I-JEPA ViT encoder: conv patch embed, fixed 2-D sin-cos positions, no class token, pre-norm blocks.

Names follow timm (`patch_embed.proj, pos_embed, blocks.N.{norm1,attn,norm2,mlp}, norm`), so official checkpoints
load key for key and the encoder exports to timm's VisionTransformer unchanged.
"""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from timm.layers import Mlp, PatchEmbed
from torch.utils.checkpoint import checkpoint

import kernels

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sincos_pos_embed_2d(dim: int, grid: int | tuple[int, int]) -> torch.Tensor:
    """(H·W, dim) fixed embedding, row-major tokens; each token = [1-D(column) ‖ 1-D(row)], as MAE and I-JEPA."""
    h, w = (grid, grid) if isinstance(grid, int) else grid
    if dim % 4:
        raise ValueError(f"sin-cos positions need an embedding dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))  # float64 as the official numpy code

    def one_axis(positions):
        out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)  # (H·W, dim/4)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    emb = np.concatenate([one_axis(cols), one_axis(rows)], axis=1)  # (H·W, dim)
    return torch.from_numpy(emb).float()


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = kernels.attention(qkv[0], qkv[1], qkv[2])  # (B, H, N, d)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)). `grad_checkpointing` recomputes this block in backward."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.grad_checkpointing = False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)  # autocast state is replayed in recompute
        return self._forward(x)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for blk in blocks:
        x = blk(x)
    return x


def set_grad_checkpointing(blocks: nn.ModuleList, enable: bool = True, every: int = 1) -> None:
    """Recompute every `every`-th block in backward (1 = all blocks), trading compute for activation memory."""
    for i, blk in enumerate(blocks):
        blk.grad_checkpointing = enable and i % every == 0


def init_weights(module: nn.Module) -> None:
    """The official init: trunc_normal(0.02) for Linear and conv weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VisionTransformer(nn.Module):
    """Encoder: images (B, 3, S, S) [+ token indices] → tokens (rows, K, D)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.embed_dim, self.num_heads, self.mlp_ratio = embed_dim, num_heads, mlp_ratio
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid = self.patch_embed.grid_size
        # Fixed, not learned; a Parameter (requires_grad=False) as in the official code, so checkpoints and timm agree.
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, self.grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = LayerNorm(embed_dim)
        self.apply(init_weights)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward(self, images: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """idx None → all tokens (B, N, D); idx (B, K) or (M, B, K) → the kept tokens (M·B, K, D), mask-major."""
        x = self.patch_embed(images)  # (B, N, D)
        if idx is None:
            x = x + self.pos_embed
        else:
            x = kernels.masked_gather(x, idx, pos=self.pos_embed[0])  # (M·B, K, D)
        x = run_blocks(self.blocks, x)
        return self.norm(x)

    def forward_intermediates(self, images: torch.Tensor, indices: int | Sequence[int] | None = None,
                              norm: bool = False, intermediates_only: bool = False):
        """The outputs of chosen blocks, as timm's VisionTransformer.forward_intermediates gives them (output_fmt
        "NLC", no prefix tokens).

        Args:
            images: (B, 3, S, S).
            indices: an int n → the last n blocks; a sequence → those block indices (negative from the end); None →
                every block.
            norm: pass each intermediate through the final LayerNorm.
            intermediates_only: return only the list of intermediates, each (B, N, D).
        Returns:
            The intermediates, or (final output (B, N, D), intermediates).
        """
        depth = len(self.blocks)
        if indices is None:
            take = set(range(depth))
        elif isinstance(indices, int):
            take = set(range(depth - indices, depth))
        else:
            take = {i % depth for i in indices}
        x = self.patch_embed(images) + self.pos_embed
        intermediates = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in take:
                intermediates.append(self.norm(x) if norm else x)
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def set_grad_checkpointing(self, enable: bool = True, every: int = 1) -> None:
        set_grad_checkpointing(self.blocks, enable, every)


def count_parameters(module: nn.Module) -> int:
    """Every parameter, the fixed positional embeddings included (as the official code counts them)."""
    return sum(p.numel() for p in module.parameters())
