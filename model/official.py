"""Checkpoints in the official I-JEPA release format → our encoder, predictor and target encoder (exports to other
libraries' formats live in model.export).

The official file is a torch.save dict with 'encoder', 'predictor', 'target_encoder' state dicts (keys prefixed
'module.' by DDP), plus optimizer state and bookkeeping. The architecture is read from the tensors' shapes; only the
number of heads is not in the weights: it is looked up from the official size for that width, or passed in.
Such files come from elsewhere, so they load with weights_only=True: a pickle that would run code is refused.
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
from model.safe_load import CheckpointError, safe_load
from model.sizes import VIT_SIZES
from model.vit import VisionTransformer

OFFICIAL_PARTS = ("encoder", "predictor", "target_encoder")


def strip_prefix(state: dict, prefix: str = "module.") -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def check_state(state: object, where: str) -> dict:
    """A state dict (str → tensor) or one line saying why not."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: holds a value of type {type(state).__name__}, not a state dict (names → "
                                  f"tensors)")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{where}: key {key!r} is of type {type(key).__name__}, not a name: not a "
                                      f"state dict")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: entry {key!r} is of type {type(value).__name__}, not a tensor: not "
                                      f"a state dict")
    return state


def _tensor(state: dict, key: str, ndim: int, where: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{where}: missing key {key!r}")
    if state[key].ndim != ndim:
        raise CheckpointError(f"{where}: {key} has shape {tuple(state[key].shape)}, expected {ndim} dimensions")
    return state[key]


def _count(state: dict, pattern: str) -> int:
    return len({m.group(1) for k in state for m in [re.match(pattern, k)] if m})


def heads_for_width(dim: int, num_heads: Optional[int], source: str) -> int:
    if num_heads:
        return num_heads
    for size in VIT_SIZES.values():
        if size.embed_dim == dim:
            return size.num_heads
    raise CheckpointError(f"{source}: width {dim} matches no official ViT size, and the number of heads is not "
                              f"stored in the weights: pass num_heads=")


def encoder_from_state(state: dict, num_heads: Optional[int], source: str) -> VisionTransformer:
    """Builds an encoder shaped like `state` (no 'module.' prefix)."""
    dim, in_chans, patch, patch_w = _tensor(state, "patch_embed.proj.weight", 4, source).shape
    pos = _tensor(state, "pos_embed", 3, source)
    side = math.isqrt(pos.shape[1])
    if patch != patch_w or side * side != pos.shape[1] or pos.shape[::2] != (1, dim):
        raise CheckpointError(f"{source}: pos_embed {tuple(pos.shape)} and patch_embed.proj.weight "
                                  f"{(dim, in_chans, patch, patch_w)} do not describe a ViT (want pos_embed "
                                  f"(1, side², {dim}) and square patches)")
    mlp_ratio = _tensor(state, "blocks.0.mlp.fc1.weight", 2, source).shape[0] / dim
    try:
        return VisionTransformer(img_size=side * patch, patch_size=patch, in_chans=in_chans, embed_dim=dim,
                                 depth=_count(state, r"blocks\.(\d+)\."), mlp_ratio=mlp_ratio,
                                 num_heads=heads_for_width(dim, num_heads, source),
                                 qkv_bias="blocks.0.attn.qkv.bias" in state)
    except ValueError as err:  # the constructor's own checks (heads divide the width, ...) on shapes from the file
        raise CheckpointError(f"{source}: its shapes give no buildable encoder: {err}") from None


def predictor_from_state(state: dict, encoder: VisionTransformer, num_heads: Optional[int],
                         source: str) -> Predictor:
    pdim = _tensor(state, "predictor_embed.weight", 2, source).shape[0]  # Linear(D → Dp): weight (Dp, D)
    mask_token = _tensor(state, "mask_token", 3, source)
    if mask_token.shape != (1, 1, pdim):
        raise CheckpointError(f"{source}: mask_token has shape {tuple(mask_token.shape)}, expected "
                                  f"(1, 1, {pdim}) (the predictor width of predictor_embed.weight)")
    mlp_ratio = _tensor(state, "predictor_blocks.0.mlp.fc1.weight", 2, source).shape[0] / pdim
    try:
        return Predictor(grid=encoder.grid, embed_dim=encoder.embed_dim, predictor_embed_dim=pdim,
                         depth=_count(state, r"predictor_blocks\.(\d+)\."), num_heads=num_heads or encoder.num_heads,
                         mlp_ratio=mlp_ratio, qkv_bias="predictor_blocks.0.attn.qkv.bias" in state)
    except ValueError as err:
        raise CheckpointError(f"{source}: its shapes give no buildable predictor: {err}") from None


def describe_mismatch(module: nn.Module, state: dict, limit: int = 3) -> str:
    """'' when `state` fits `module` key for key and shape for shape; else what differs, on one line."""
    want = module.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} is {tuple(state[k].shape)}, not {tuple(want[k].shape)}" for k in want
              if k in state and state[k].shape != want[k].shape]
    parts = [f"{label} ({len(keys)}): {', '.join(map(str, keys[:limit]))}{', ...' if len(keys) > limit else ''}"
             for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("wrong shapes", shapes)) if keys]
    return "; ".join(parts)


def load_strict(module: nn.Module, state: object, what: str,
                against: str = "the architecture read from its own shapes") -> None:
    """Every key used, every shape checked; the one-line error names the file part and the keys."""
    mismatch = describe_mismatch(module, check_state(state, what))
    if mismatch:
        raise CheckpointError(f"{what}: does not match {against}: {mismatch}")
    module.load_state_dict(state, strict=True)


def load_official_checkpoint(path: str | Path, num_heads: Optional[int] = None,
                             pred_num_heads: Optional[int] = None) -> tuple[VisionTransformer, Predictor,
                                                                            VisionTransformer]:
    """(encoder, predictor, target_encoder) from an official I-JEPA checkpoint, fp32 on the CPU.

    Raises:
        CheckpointError: one line naming the file (and part, key) and what is wrong.
    """
    path = Path(path)
    ckpt = safe_load(path)
    missing = [part for part in OFFICIAL_PARTS if not isinstance(ckpt, dict) or part not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not in the official I-JEPA format: missing {missing} (expected a dict "
                                  f"with {list(OFFICIAL_PARTS)})")
    states = {part: strip_prefix(check_state(ckpt[part], f"{path}[{part}]")) for part in OFFICIAL_PARTS}
    encoder = encoder_from_state(states["encoder"], num_heads, f"{path}[encoder]")
    load_strict(encoder, states["encoder"], f"{path}[encoder]")
    target = make_target_encoder(encoder)
    load_strict(target, states["target_encoder"], f"{path}[target_encoder]")
    predictor = predictor_from_state(states["predictor"], encoder, pred_num_heads, f"{path}[predictor]")
    load_strict(predictor, states["predictor"], f"{path}[predictor]")
    return encoder, predictor, target


def load_encoder_for_eval(path: str | Path, which: Literal["target", "context"] = "target",
                          **kwargs) -> VisionTransformer:
    """The encoder evaluated: the TARGET (EMA) encoder by default, as the paper does; or the context encoder."""
    encoder, _, target = load_official_checkpoint(path, **kwargs)
    return (target if which == "target" else encoder).eval()

