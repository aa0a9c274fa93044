"""The I-JEPA predictor: context tokens + mask tokens at the target positions → predicted target features.

Names follow the official VisionTransformerPredictor (predictor_embed, mask_token, predictor_pos_embed,
predictor_blocks, predictor_norm, predictor_proj) so official checkpoints load key for key.
"""
from __future__ import annotations

import torch
import torch.nn as nn

import kernels
from model.vit import Block, LayerNorm, init_weights, run_blocks, set_grad_checkpointing, sincos_pos_embed_2d


class Predictor(nn.Module):
    def __init__(self, grid: tuple[int, int], embed_dim: int = 768, predictor_embed_dim: int = 384, depth: int = 6,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.grid = tuple(grid)
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
        self.predictor_pos_embed = nn.Parameter(sincos_pos_embed_2d(predictor_embed_dim, self.grid)[None],
                                                requires_grad=False)
        self.predictor_blocks = nn.ModuleList(
            Block(predictor_embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.predictor_norm = LayerNorm(predictor_embed_dim)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, z: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
        """z (B, Kc, D) context features at ctx_idx (B, Kc); tgt_idx (M, B, Kt) → predictions (M·B, Kt, D)."""
        if ctx_idx.dim() != 2 or tgt_idx.dim() != 3 or z.shape[:2] != ctx_idx.shape:
            raise ValueError(f"Predictor: expected z (B, Kc, D), ctx_idx (B, Kc), tgt_idx (M, B, Kt); got "
                             f"{tuple(z.shape)}, {tuple(ctx_idx.shape)}, {tuple(tgt_idx.shape)}")
        kc = ctx_idx.shape[1]
        # One fused pass: [embed(z) + pos[ctx] ‖ mask_token + pos[tgt]] per (mask, image), mask-major rows.
        x = kernels.predictor_tokens(self.predictor_embed(z), ctx_idx, tgt_idx, self.predictor_pos_embed[0],
                                     self.mask_token)  # (M·B, Kc + Kt, Dp)
        x = self.predictor_norm(run_blocks(self.predictor_blocks, x))
        return self.predictor_proj(x[:, kc:])  # (M·B, Kt, D)

    def set_grad_checkpointing(self, enable: bool = True, every: int = 1) -> None:
        set_grad_checkpointing(self.predictor_blocks, enable, every)
