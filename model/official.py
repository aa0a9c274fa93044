"""Checkpoints in the official I-JEPA release format → our encoder, predictor and target encoder; timm export.

The official file is a torch.save dict with 'encoder', 'predictor', 'target_encoder' state dicts (keys prefixed
'module.' by DDP), plus optimizer state and bookkeeping. The architecture is read from the tensors' shapes; only the
number of heads is not in the weights: it is looked up from the official size for that width, or passed in.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn

from model.ema import make_target_encoder
from model.predictor import Predictor
from model.sizes import VIT_SIZES
from model.vit import VisionTransformer

OFFICIAL_PARTS = ("encoder", "predictor", "target_encoder")


def strip_prefix(state: dict, prefix: str = "module.") -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state for m in [re.match(pattern, k)] if m})


def heads_for_width(dim: int, num_heads: Optional[int], source: str) -> int:
    if num_heads:
        return num_heads
    for size in VIT_SIZES.values():
        if size.embed_dim == dim:
            return size.num_heads
    raise ValueError(f"{source}: width {dim} matches no official ViT size, and the number of heads is not stored in "
                     f"the weights: pass num_heads=")


def encoder_from_state(state: dict, num_heads: Optional[int], source: str) -> VisionTransformer:
    """Builds an encoder shaped like `state` (no 'module.' prefix)."""
    dim, in_chans, patch, _ = state["patch_embed.proj.weight"].shape
    side = math.isqrt(state["pos_embed"].shape[1])
    if side * side != state["pos_embed"].shape[1]:
        raise ValueError(f"{source}: pos_embed has {state['pos_embed'].shape[1]} tokens, not a square grid")
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    return VisionTransformer(img_size=side * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim,
                             depth=_count(state, r"blocks\.(\d+)\."), num_heads=heads_for_width(dim, num_heads, source),
                             mlp_ratio=mlp_ratio, qkv_bias="blocks.0.attn.qkv.bias" in state)


def predictor_from_state(state: dict, encoder: VisionTransformer, num_heads: Optional[int]) -> Predictor:
    pdim = state["mask_token"].shape[-1]
    return Predictor(grid=encoder.grid, embed_dim=encoder.embed_dim, predictor_embed_dim=pdim,
                     depth=_count(state, r"predictor_blocks\.(\d+)\."), num_heads=num_heads or encoder.num_heads,
                     mlp_ratio=state["predictor_blocks.0.mlp.fc1.weight"].shape[0] / pdim,
                     qkv_bias="predictor_blocks.0.attn.qkv.bias" in state)


def load_strict(module: nn.Module, state: dict, what: str) -> None:
    """Every key used, every shape checked; the error names the file part and the keys."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{what}: does not match the architecture read from its own shapes:\n{err}") from err


def load_official_checkpoint(path: str | Path, num_heads: Optional[int] = None,
                             pred_num_heads: Optional[int] = None) -> tuple[VisionTransformer, Predictor,
                                                                            VisionTransformer]:
    """(encoder, predictor, target_encoder) from an official I-JEPA checkpoint, fp32 on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a damaged file; re-raised with the file named
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from err
    missing = [part for part in OFFICIAL_PARTS if not isinstance(ckpt, dict) or part not in ckpt]
    if missing:
        raise ValueError(f"{path}: not in the official I-JEPA format: missing {missing} (expected a dict with "
                         f"{list(OFFICIAL_PARTS)})")
    states = {part: strip_prefix(ckpt[part]) for part in OFFICIAL_PARTS}
    encoder = encoder_from_state(states["encoder"], num_heads, f"{path}[encoder]")
    load_strict(encoder, states["encoder"], f"{path}[encoder]")
    target = make_target_encoder(encoder)
    load_strict(target, states["target_encoder"], f"{path}[target_encoder]")
    predictor = predictor_from_state(states["predictor"], encoder, pred_num_heads)
    load_strict(predictor, states["predictor"], f"{path}[predictor]")
    return encoder, predictor, target


def load_encoder_for_eval(path: str | Path, which: Literal["target", "context"] = "target",
                          **kwargs) -> VisionTransformer:
    """The encoder evaluated: the TARGET (EMA) encoder by default, as the paper does; or the context encoder."""
    encoder, _, target = load_official_checkpoint(path, **kwargs)
    return (target if which == "target" else encoder).eval()


def timm_kwargs(encoder: VisionTransformer) -> dict:
    """timm VisionTransformer arguments that give our encoder's features from forward_features."""
    return dict(img_size=encoder.grid[0] * encoder.patch_embed.patch_size[0],
                patch_size=encoder.patch_embed.patch_size[0], embed_dim=encoder.embed_dim, depth=len(encoder.blocks),
                num_heads=encoder.num_heads, mlp_ratio=encoder.mlp_ratio, qkv_bias=True, class_token=False,
                global_pool="avg", fc_norm=False, num_classes=0)


def to_timm(encoder: VisionTransformer) -> nn.Module:
    """A timm VisionTransformer holding this encoder's weights (same names: the state dict loads strictly)."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    model = TimmViT(**timm_kwargs(encoder))
    model.load_state_dict({k: v.detach().float().clone() for k, v in encoder.state_dict().items()}, strict=True)
    return model.eval()


def export_timm(encoder: VisionTransformer, path: str | Path) -> dict:
    """Writes a timm-loadable state dict; returns the timm_kwargs to build the model that loads it."""
    torch.save({k: v.detach().float().clone() for k, v in encoder.state_dict().items()}, path)
    return timm_kwargs(encoder)
