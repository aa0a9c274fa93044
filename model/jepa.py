"""The I-JEPA objective: predict, from the context tokens, the target encoder's features at the target blocks."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from model.ema import make_target_encoder
from model.predictor import Predictor
from model.sizes import encoder_size
from model.vit import VisionTransformer


@torch.no_grad()
def target_features(target_encoder: VisionTransformer, images: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
    """Target encoder on ALL tokens → LayerNorm without affine over features → the target blocks (M·B, Kt, D)."""
    h = target_encoder(images)  # (B, N, D)
    h = F.layer_norm(h, h.shape[-1:])  # eps 1e-5, no affine, as the official code
    return kernels.masked_gather(h, tgt_idx)


class JEPA(nn.Module):
    """The trainable part (context encoder + predictor); the target encoder is kept apart (model/ema.py)."""

    def __init__(self, context_encoder: VisionTransformer, predictor: Predictor):
        super().__init__()
        self.context_encoder = context_encoder
        self.predictor = predictor

    def forward(self, images: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor,
                targets: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
        """images (B, 3, S, S), ctx_idx (B, Kc), tgt_idx (M, B, Kt), targets (M·B, Kt, D) → scalar loss. `targets` may
        be a function, called after the predictor: train.py's target weights arrive by an all-gather meanwhile."""
        z = self.context_encoder(images, ctx_idx)  # (B, Kc, D)
        pred = self.predictor(z, ctx_idx, tgt_idx)  # (M·B, Kt, D)
        return jepa_loss(pred, targets() if callable(targets) else targets)


def ijepa_loss(model: JEPA, target_encoder: VisionTransformer, images: torch.Tensor, ctx_idx: torch.Tensor,
               tgt_idx: torch.Tensor) -> torch.Tensor:
    """The whole objective from (images, ctx_idx, tgt_idx): targets without gradient, then predict and compare."""
    return model(images, ctx_idx, tgt_idx, target_features(target_encoder, images, tgt_idx))


def build_jepa(model, crop_size: int) -> tuple[JEPA, VisionTransformer]:
    """(trainable context encoder + predictor, fp32 target encoder).

    Args:
        model: the config's model section (config.sections.ModelConfig): arch and its overrides, patch size, predictor.
        crop_size: the training crop's side in pixels (the config's data.crop_size).
    """
    dim, depth, heads, mlp_ratio = encoder_size(model)
    encoder = VisionTransformer(img_size=crop_size, patch_size=model.patch_size, embed_dim=dim, depth=depth,
                                num_heads=heads, mlp_ratio=mlp_ratio)
    predictor = Predictor(encoder.grid, dim, model.pred_emb_dim, model.pred_depth, model.pred_num_heads or heads,
                          mlp_ratio)
    if model.activation_checkpointing:
        encoder.set_grad_checkpointing(True)
        predictor.set_grad_checkpointing(True)
    return JEPA(encoder, predictor), make_target_encoder(encoder)


def jepa_loss(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 (beta 1), mean over every element: what the official code optimises (the paper says L2)."""
    return F.smooth_l1_loss(pred.float(), targets.float())
