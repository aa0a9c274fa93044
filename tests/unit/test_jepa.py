"""The I-JEPA objective: gradients reach the context encoder and predictor only; the loss is the spec's."""
import torch

from config import load_config
from model.ema import make_target_encoder
from model.jepa import JEPA, build_jepa, ijepa_loss, target_features
from model.predictor import Predictor
from model.vit import VisionTransformer


def build():
    enc = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3)
    return JEPA(enc, Predictor(enc.grid, 48, 24, 2, 3)), make_target_encoder(enc)


def batch():
    images = torch.randn(3, 3, 32, 32)
    ctx = torch.tensor([[0, 1, 2, 4, 5], [1, 2, 3, 6, 7], [0, 4, 8, 12, 13]])
    tgt = torch.tensor([[[10, 11, 14], [8, 9, 12], [2, 3, 6]], [[5, 6, 9], [10, 14, 15], [1, 5, 9]]])  # (M=2, B=3, 3)
    return images, ctx, tgt


def test_gradients_reach_context_encoder_and_predictor_only():
    model, target = build()
    images, ctx, tgt = batch()
    loss = model(images, ctx, tgt, target_features(target, images, tgt))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable), \
        [n for n, p in trainable if p.grad is None or p.grad.abs().sum() == 0]
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert model.context_encoder.pos_embed.grad is None  # fixed positions stay fixed


def test_loss_equals_an_independent_derivation_of_the_spec():
    model, target = build()
    with torch.no_grad():
        for p in target.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images, ctx, tgt = batch()
    with torch.no_grad():
        loss = ijepa_loss(model, target, images, ctx, tgt)
        # targets: target encoder on all tokens, LayerNorm without affine, then each mask's tokens, mask-major
        h = target(images)
        h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
        want_t = torch.stack([h[b, tgt[m, b]] for m in range(2) for b in range(3)])
        # predictions: context tokens → predictor, one row per (mask, image)
        z = model.context_encoder(images, ctx)
        pred = model.predictor(z, ctx, tgt)
        d = (pred - want_t).abs()
        want = torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    assert torch.allclose(loss, want, rtol=1e-6, atol=1e-7)
    assert loss > 0


def test_build_from_config():
    cfg = load_config("configs/tiny_cpu.yaml", overrides=["model.activation_checkpointing=true"])
    model, target = build_jepa(cfg.model, cfg.data.crop_size)
    assert model.context_encoder.grid == (8, 8) and model.context_encoder.embed_dim == 96
    assert len(model.predictor.predictor_blocks) == 2 and model.predictor.mask_token.shape == (1, 1, 48)
    assert all(b.grad_checkpointing for b in model.context_encoder.blocks)
    assert all(torch.equal(a, b) for a, b in zip(model.context_encoder.parameters(), target.parameters()))
