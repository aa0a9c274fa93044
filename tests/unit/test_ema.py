"""EMA of the context encoder into an fp32 target, under bf16 training."""
import torch

from model.ema import ema_update, make_target_encoder
from model.vit import VisionTransformer
from training.schedules import momentum_at


def test_fp32_target_follows_reference_ema_over_bf16_steps():
    torch.manual_seed(0)
    context = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    target = make_target_encoder(context)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in target.parameters())
    reference = [p.detach().double().clone() for p in target.parameters()]
    opt = torch.optim.AdamW([p for p in context.parameters() if p.requires_grad], lr=1e-3)
    steps, total = 20, 20
    for step in range(1, steps + 1):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = context(torch.randn(2, 3, 16, 16)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        m = momentum_at(step, total, 0.996, 1.0)
        ema_update(list(target.parameters()), context.parameters(), m)
        for r, s in zip(reference, context.parameters()):
            r.mul_(m).add_((1 - m) * s.detach().double())  # the spec's update, in float64, one tensor at a time
    worst = max(((t.double() - r).abs().max() / r.abs().max()).item()
                for t, r in zip(target.parameters(), reference))
    assert worst <= 1e-6, worst
    moved = max((t - p).abs().max().item() for t, p in zip(target.parameters(), context.parameters()))
    assert moved > 0  # the target lags the context encoder


def test_bf16_target_would_lose_small_updates():
    """Why the master copy is fp32: the same update applied to a bf16 copy is rounded away."""
    w = torch.ones(1000)
    src = w + 0.01
    t32, t16 = w.clone(), w.to(torch.bfloat16)
    ema_update([t32], [src], 0.996)
    ema_update([t16], [src.to(torch.bfloat16)], 0.996)
    assert (t32 > 1).all() and (t16 == 1).all()
