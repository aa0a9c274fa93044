"""ViT sizes of the official I-JEPA code (plain numbers: the config checks its arch names against them)."""
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


def encoder_size(model) -> ViTSize:
    """The encoder's (embed_dim, depth, num_heads, mlp_ratio): the arch's values with a model config's overrides.

    Args:
        model: the config's model section (config.sections.ModelConfig): arch, and embed_dim / depth / num_heads, each
            None for the arch's own value.
    """
    size = VIT_SIZES[model.arch]
    return ViTSize(model.embed_dim or size.embed_dim, model.depth or size.depth, model.num_heads or size.num_heads,
                   size.mlp_ratio)
