"""The attentive probe of V-JEPA: a learned query cross-attends to the frozen encoder's patch tokens (one block:
cross-attention, then an MLP, each pre-norm with a residual on the query), then a linear head; trained as a grid of
learning rates and weight decays at once (evaluation.sweep), the best head on val reported with its setting.

The tokens are computed once and held in memory when they fit the caller's budget; otherwise the frozen encoder
recomputes each batch, once for all the heads of the grid.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp

from evaluation.features import normalize
from evaluation.sweep import Heads, Setting, SweepResult, best_of, head_accuracies, settings_grid, train_heads
from model.vit import LayerNorm, init_weights

ATTENTIVE_GRID = settings_grid((1e-3, 3e-3, 1e-2, 3e-2), (0.01, 0.1))


class AttentiveClassifier(nn.Module):
    """tokens (B, N, D) → logits (B, classes): V-JEPA's AttentivePooler (one query, a complete cross-attention block)
    and a linear head."""

    def __init__(self, dim: int, num_heads: int, num_classes: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AttentiveClassifier: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm1 = LayerNorm(dim)
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.head = nn.Linear(dim, num_classes)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.query, std=0.02)
        for layer in (self.proj, self.mlp.fc2):  # V-JEPA rescales the residual branches by 1/sqrt(2 · depth)
            layer.weight.data.div_(math.sqrt(2.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The cross-attention of one query, folded so that no key or value is formed per token.

        A query's logit on token x is q·(Wk x + bk) = (Wk^T q)·x + q·bk, and its output is Wv (Σ a_i x_i) + bv with
        Σ a_i = 1; with x = γ ⊙ x̂ + β (norm1) the per-head constants cancel in the softmax. So the H heads' logits
        and weighted sums take 2·B·N·D·H multiply-adds instead of the 2·B·N·D² of the keys and values: the same
        function (reference_forward is the plain one; the tests compare them), D/H times cheaper.
        """
        b, n, d = tokens.shape
        h = self.num_heads
        x_hat = F.layer_norm(tokens, (d,), eps=self.norm1.eps)  # (B, N, D), norm1 without its affine
        w_k, w_v = self.kv.weight[:d].view(h, d // h, d), self.kv.weight[d:].view(h, d // h, d)  # (H, d/H, D)
        q = self.q(self.query).view(h, d // h)  # (H, d/H)
        u = torch.einsum("he,hed->hd", q, w_k) * self.norm1.weight  # (H, D): the folded key of each head
        attn = (torch.einsum("bnd,hd->bhn", x_hat, u) * (d // h) ** -0.5).softmax(dim=-1)  # (B, H, N)
        mixed = torch.einsum("bhn,bnd->bhd", attn, x_hat) * self.norm1.weight + self.norm1.bias  # (B, H, D)
        pooled = torch.einsum("bhd,hed->bhe", mixed, w_v) + self.kv.bias[d:].view(h, d // h)  # (B, H, d/H)
        return self._head(pooled.reshape(b, 1, d))

    def reference_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The cross-attention as V-JEPA writes it: keys and values for every token, then SDPA."""
        b, n, d = tokens.shape
        h = self.num_heads
        k, v = self.kv(self.norm1(tokens)).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 × (B, H, N, d/H)
        q = self.q(self.query).reshape(1, h, 1, d // h).expand(b, -1, -1, -1)  # (B, H, 1, d/H); the query: no norm
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 1, d)
        return self._head(pooled)

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.query + self.proj(pooled)  # (B, 1, D)
        x = x + self.mlp(self.norm2(x))
        return self.head(x[:, 0])  # (B, classes)


class TokenNorm(nn.BatchNorm1d):
    """Every token channel standardised over the batch's tokens (BatchNorm without affine, running statistics for
    evaluation), computed once for all heads, as the linear probe standardises its features. A trained encoder's
    tokens can vary little between images beside their per-channel offsets (a std of 0.09 against 1.0 overall on
    the demo), which the probe's LayerNorm keeps: its heads would then learn at a rate set by each encoder's scale."""

    def __init__(self, dim: int):
        super().__init__(dim, affine=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens.flatten(0, 1)).view_as(tokens)  # (B, N, D)


class Tokens:
    """The frozen encoder's output tokens (B, N, D) of uint8 images (N, 3, S, S), by sample index: computed once and
    held on `device` when `cache`, else recomputed by the encoder for every batch asked (memory for time)."""

    def __init__(self, encoder: nn.Module, images: torch.Tensor, device: torch.device | str, cache: bool,
                 batch_size: int = 256):
        self.encoder, self.images, self.device = encoder.to(device).eval(), images, torch.device(device)
        self.cached = None
        if cache:
            self.cached = torch.cat([self._compute(idx) for idx in torch.arange(len(images)).split(batch_size)])

    @torch.no_grad()
    def _compute(self, idx: torch.Tensor) -> torch.Tensor:
        return self.encoder(normalize(self.images[idx].to(self.device))).float()  # (B, N, D)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.cached[idx.to(self.device)] if self.cached is not None else self._compute(idx)


def token_bytes(encoder: nn.Module, images: int) -> int:
    """Bytes the fp32 output tokens of `images` images take."""
    return images * encoder.num_patches * encoder.embed_dim * 4


def attentive_sweep(train: Tokens, train_y: torch.Tensor, val: Tokens, val_y: torch.Tensor, num_heads: int,
                    num_classes: int, settings: Sequence[Setting] = ATTENTIVE_GRID, epochs: int = 20,
                    batch_size: int = 64, seed: int = 0) -> SweepResult:
    """An attentive probe per setting, all trained on the same batches of frozen tokens; the best on val.

    Args:
        num_heads: the probe's attention heads (the encoder's count, as V-JEPA).
    """
    torch.manual_seed(seed)
    dim = train.encoder.embed_dim
    heads = Heads([AttentiveClassifier(dim, num_heads, num_classes) for _ in settings], TokenNorm(dim))
    heads = heads.to(train.device)
    train_heads(heads, settings, train, train_y.to(train.device), epochs, batch_size, seed, warmup_epochs=1)
    return best_of(settings, head_accuracies(heads, val, val_y.to(val.device), batch_size))
