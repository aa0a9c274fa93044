"""ViT sizes of the official I-JEPA code, kept free of torch so that configuration checks import nothing heavy."""
from __future__ import annotations

from typing import NamedTuple


class ViTSize(NamedTuple):
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float


VIT_SIZES: dict[str, ViTSize] = {
    "vit_tiny": ViTSize(192, 12, 3, 4.0),
    "vit_small": ViTSize(384, 12, 6, 4.0),
    "vit_base": ViTSize(768, 12, 12, 4.0),
    "vit_large": ViTSize(1024, 24, 16, 4.0),
    "vit_huge": ViTSize(1280, 32, 16, 4.0),
    "vit_giant": ViTSize(1408, 40, 16, 48 / 11),
}
