"""metrics: FLOP counting (the figure behind TFLOP/s and MFU in train.py and bench.py)."""
import torch
import torch.nn.functional as F

from training.metrics import count_flops


def test_count_flops_counts_sdpa_on_the_cpu_like_explicit_attention():
    b, h, n, d = 2, 3, 40, 24
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    matmuls = 2 * (2 * b * h * n * n * d)  # q·kᵀ and attention·v
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == matmuls
    explicit = count_flops(lambda: ((q @ k.transpose(-1, -2)) * d**-0.5).softmax(-1) @ v)
    assert explicit == matmuls
    # backward: torch's SDPA formula counts the recomputed q·kᵀ too (5 matmuls, as for the CUDA kernels)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == matmuls * 7 // 2
