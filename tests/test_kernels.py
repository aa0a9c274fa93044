"""The model's gather and attention entry points against plain loops and explicit softmax."""
import pytest
import torch

import kernels


def test_masked_gather_matches_a_loop_and_accumulates_repeated_indices():
    x = torch.randn(3, 10, 5, requires_grad=True)
    pos = torch.randn(10, 5, requires_grad=True)
    idx = torch.randint(0, 10, (2, 3, 4))
    idx[1, 0] = idx[0, 0]  # the same tokens in two masks
    out = kernels.masked_gather(x, idx, pos)
    want = torch.stack([x[b, idx[m, b]] + pos[idx[m, b]] for m in range(2) for b in range(3)])
    assert torch.equal(out, want)
    g = torch.randn_like(out)
    gx, gp = torch.autograd.grad(out, (x, pos), g)
    wx, wp = torch.autograd.grad(want, (x, pos), g)
    assert torch.allclose(gx, wx) and torch.allclose(gp, wp)
    shared = kernels.masked_gather(pos[None], idx)  # batch-1 source shared by every row
    assert torch.equal(shared, torch.stack([pos[idx[m, b]] for m in range(2) for b in range(3)]))


def test_masked_gather_rejects_bad_shapes():
    with pytest.raises(ValueError, match="idx must be an int32/int64"):
        kernels.masked_gather(torch.randn(2, 4, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="x has batch 3 but idx has batch 2"):
        kernels.masked_gather(torch.randn(3, 4, 3), torch.zeros(2, 2, dtype=torch.long))


def test_attention_matches_explicit_softmax():
    q, k, v = torch.randn(3, 2, 3, 37, 24).unbind(0)
    assert torch.allclose(kernels.attention(q, k, v), kernels.attention_reference(q, k, v), atol=1e-5)
