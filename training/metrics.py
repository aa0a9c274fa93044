"""Throughput, MFU and collapse diagnostics: the figures train.py logs and bench.py reports."""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

# Dense bf16 peak of each card, TFLOP/s (vendor figures), for MFU. An H200's measured practical ceiling is lower:
# 780 TFLOP/s for an 8192³ bf16 matmul.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(device: torch.device) -> Optional[float]:
    """The bf16 peak of a known GPU; None on the CPU or an unknown card (MFU is then not reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


@functools.cache  # once per process
def _count_cpu_sdpa() -> None:
    """torch's flop counter knows the CUDA SDPA kernels but not the CPU one (it counts 0 for it): add its formulas,
    the same as the CUDA kernels'."""
    from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _forward(query, key, value, *args, out_val=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)  # shapes: the counter passes shapes, not tensors

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (forward and backward included if `fn` runs them), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    _count_cpu_sdpa()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass
class IntervalTimer:
    """Wall time between log steps, split into time waiting for data and the rest (compute)."""

    start: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    steps: int = 0
    images: int = 0

    def add_wait(self, seconds: float) -> None:
        self.data_wait += seconds

    def add_step(self, images: int) -> None:
        self.steps += 1
        self.images += images

    def report(self, flops_per_step: Optional[float], peak: Optional[float]) -> dict:
        """Figures for the interval since the last report; resets. Call after the device is synchronised."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        steps = max(self.steps, 1)
        out = {"step_time_s": elapsed / steps, "data_wait_s": self.data_wait / steps,
               "compute_s": (elapsed - self.data_wait) / steps, "images_per_s": self.images / elapsed}
        out["images_per_gpu_hour"] = out["images_per_s"] * 3600
        out["tflops"] = flops_per_step / out["step_time_s"] / 1e12 if flops_per_step else None
        out["mfu"] = out["tflops"] / peak if out["tflops"] and peak else None
        self.start, self.data_wait, self.steps, self.images = time.perf_counter(), 0.0, 0, 0
        return out


@torch.no_grad()
def collapse_diagnostics(features: torch.Tensor) -> dict:
    """features (B, N, D) → pooled over tokens: mean per-dimension std and effective rank (exp of the entropy of the
    normalised singular values; 1 = fully collapsed, min(B, D) = spread evenly)."""
    pooled = features.float().mean(dim=1)  # (B, D)
    std = pooled.std(dim=0).mean().item()
    s = torch.linalg.svdvals(pooled - pooled.mean(dim=0))
    p = s / s.sum().clamp_min(1e-12)
    rank = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()).item()
    return {"feature_std": std, "effective_rank": rank}


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
