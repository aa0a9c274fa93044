"""The Triton kernels beyond their unit checks (unit/test_kernels.py): training with the Triton ops follows training
with the reference ops (10 steps of a tiny I-JEPA, same losses), and the kernels compile for Hopper without a GPU.

On the CPU the Triton kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1); on a GPU host
on the GPU. fp32 throughout.
"""
import os

import pytest
import torch

import kernels
from model.ema import ema_update, make_target_encoder
from model.jepa import JEPA, ijepa_loss
from model.predictor import Predictor
from model.vit import VisionTransformer

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 10
# Per-step loss tolerance between the two runs: both compute in fp32 and differ only in summation order (online vs
# explicit softmax, atomics vs index_add); seen: at most 3e-7 relative over 50 steps (torch 2.14, triton 3.8
# interpreter, 2-core dev machine).
LOSS_RTOL, LOSS_ATOL = 1e-5, 1e-7


def _batch(step: int, batch: int = 2, masks: int = 3, grid: int = 16):
    """The same images every step (so the loss falls) and fresh masks; targets of different masks overlap."""
    g = torch.Generator().manual_seed(step)
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1234))
    order = torch.stack([torch.randperm(grid, generator=g) for _ in range(batch)])  # (B, N)
    ctx_idx = order[:, :9].sort(dim=1).values  # (B, Kc)
    tgt_idx = torch.stack([torch.stack([torch.randperm(grid, generator=g)[:4] for _ in range(batch)])
                           for _ in range(masks)])  # (M, B, Kt)
    return images.to(DEVICE), ctx_idx.to(DEVICE), tgt_idx.to(DEVICE)


def _train(attention: str, gather: str) -> list[float]:
    kernels.configure(attention=attention, gather=gather, device=DEVICE)
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2)  # head dim 24
    predictor = Predictor(encoder.grid, embed_dim=48, predictor_embed_dim=24, depth=1, num_heads=1)
    model = JEPA(encoder, predictor).to(DEVICE)
    target = make_target_encoder(encoder)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.04)
    losses = []
    for step in range(STEPS):
        loss = ijepa_loss(model, target, *_batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(target.parameters(), encoder.parameters(), momentum=0.99)
        losses.append(loss.item())
    return losses


def test_triton_ops_train_like_the_reference(clean_switch):
    want = _train("reference", "reference")
    got = _train("triton", "triton")
    assert want[-1] < 0.8 * want[0], f"the tiny model did not learn: {want[0]:.4f} → {want[-1]:.4f}"
    worst = max(abs(g - w) / abs(w) for g, w in zip(got, want))
    print(f"\n{STEPS} steps: loss {want[0]:.5f} → {want[-1]:.5f}; worst relative step difference {worst:.2e}")
    for step, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=LOSS_RTOL, abs=LOSS_ATOL), f"step {step}: triton {g} vs reference {w}"


def test_kernels_compile_to_hopper_cubins_without_a_gpu():
    """The interpreter never lowers the kernels: compile the training shapes' kernels for sm_90 with Triton's own
    ptxas (benchmarks/aot_compile_check.py; without --quick it covers every dtype, autotune config and head dim)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.aot_compile_check", "--quick"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 failed" in proc.stdout and " 15 compiled" in proc.stdout, proc.stdout
