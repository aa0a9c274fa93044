"""ViT encoder and predictor: positions, masked forward, intermediates as timm gives them, parameter counts,
activation checkpointing."""
import math

import torch

from config import load_config
from model.export import to_timm
from model.predictor import Predictor
from model.sizes import VIT_SIZES, encoder_size
from model.vit import VisionTransformer, count_parameters, sincos_pos_embed_2d


def test_sincos_matches_the_spec_formula():
    dim, h, w = 16, 3, 5
    emb = sincos_pos_embed_2d(dim, (h, w))
    assert emb.shape == (h * w, dim)
    r, c = 2, 4
    token = emb[r * w + c]  # row-major
    omega = [1.0 / 10000 ** (k / (dim / 4)) for k in range(dim // 4)]
    want = ([math.sin(c * o) for o in omega] + [math.cos(c * o) for o in omega]
            + [math.sin(r * o) for o in omega] + [math.cos(r * o) for o in omega])
    assert torch.allclose(token, torch.tensor(want), atol=1e-6)


def test_masked_forward_with_every_index_equals_full_forward():
    enc = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3).eval()
    x = torch.randn(2, 3, 32, 32)
    all_idx = torch.arange(16).repeat(2, 1)
    with torch.no_grad():
        assert torch.allclose(enc(x), enc(x, all_idx), atol=1e-6)
        two = enc(x, torch.stack([all_idx[:, :5], all_idx[:, 5:10]]))  # (M=2, B=2, K=5) → mask-major rows
        one = enc(x, all_idx[:, 5:10])
    assert two.shape == (4, 5, 48) and torch.allclose(two[2:], one, atol=1e-6)


def test_forward_intermediates_match_timms_and_the_forward():
    enc = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=5, num_heads=3).eval()
    x = torch.randn(2, 3, 32, 32)
    timm_enc = to_timm(enc)
    with torch.no_grad():
        ours = enc.forward_intermediates(x, indices=4, norm=True, intermediates_only=True)
        theirs = timm_enc.forward_intermediates(x, indices=4, norm=True, output_fmt="NLC", intermediates_only=True)
        final, picked = enc.forward_intermediates(x, indices=[0, -1])
        assert len(ours) == len(theirs) == 4
        for a, b in zip(ours, theirs):
            assert a.shape == (2, 16, 48) and (a - b).abs().max() <= 1e-5
        assert not torch.allclose(ours[0], ours[-1])
        assert torch.allclose(enc.norm(picked[1]), enc(x), atol=1e-6) and torch.allclose(final, enc(x), atol=1e-6)
        assert torch.allclose(picked[0], enc.blocks[0](enc.patch_embed(x) + enc.pos_embed), atol=1e-6)


def test_vith14_parameter_counts_on_meta_device():
    cfg = load_config("configs/vith14_in1k.yaml")
    dim, depth, heads, ratio = encoder_size(cfg.model)
    with torch.device("meta"):
        enc = VisionTransformer(img_size=224, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads,
                                mlp_ratio=ratio)
        pred = Predictor(enc.grid, dim, cfg.model.pred_emb_dim, cfg.model.pred_depth, heads)
    assert round(count_parameters(enc) / 1e6, 1) == 630.8
    assert round(count_parameters(pred) / 1e6, 1) == 22.4
    assert enc.blocks[0].attn.qkv.weight.shape == (3 * 1280, 1280)
    assert VIT_SIZES["vit_giant"].mlp_ratio * 1408 == 6144


def test_activation_checkpointing_same_loss_and_grads_under_bf16_autocast():
    torch.manual_seed(0)
    enc = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3)
    pred = Predictor(enc.grid, 48, 24, 2, 3)
    x = torch.randn(2, 3, 32, 32)
    ctx = torch.tensor([[0, 1, 2, 5, 6, 9], [1, 2, 3, 4, 8, 12]])
    tgt = torch.tensor([[[10, 11], [14, 15]]])

    def run():
        enc.zero_grad(set_to_none=True)
        pred.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = pred(enc(x, ctx), ctx, tgt).float().pow(2).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in [*enc.parameters(), *pred.parameters()] if p.requires_grad]

    plain_loss, plain_grads = run()
    enc.set_grad_checkpointing(True)
    pred.set_grad_checkpointing(True, every=2)
    assert [b.grad_checkpointing for b in pred.predictor_blocks] == [True, False]
    ckpt_loss, ckpt_grads = run()
    assert torch.equal(plain_loss, ckpt_loss)
    for a, b in zip(plain_grads, ckpt_grads):
        assert torch.equal(a, b)
