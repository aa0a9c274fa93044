"""Throughput, MFU, memory and the collapse diagnostics' feature moments: the figures train.py logs and bench.py
reports."""
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


@dataclass
class FeatureMoments:
    """Sums of features (n, D) that add up across chunks and ranks: count, sum and sum of outer products (float64:
    the spread of pooled features can be a percent of their mean, which fp32 sums would lose). From them the
    per-dimension std and the spectrum of the features' covariance, so nothing but a D x D matrix is gathered."""

    count: int = 0
    total: Optional[torch.Tensor] = None  # (D,)
    outer: Optional[torch.Tensor] = None  # (D, D)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double()  # (n, D)
        total, outer = x.sum(0).cpu(), (x.T @ x).cpu()
        self.count += len(x)
        self.total = total if self.total is None else self.total + total
        self.outer = outer if self.outer is None else self.outer + outer

    def __add__(self, other: "FeatureMoments") -> "FeatureMoments":
        if other.total is None or self.total is None:
            return self if other.total is None else other
        return FeatureMoments(self.count + other.count, self.total + other.total, self.outer + other.outer)

    def diagnostics(self) -> dict:
        """The mean per-dimension std, the effective rank (exp of the entropy of the normalised singular values of
        the centred features; 1 = fully collapsed) and its ceiling, min(n - 1, D): n centred rows span at most n - 1
        directions, so the rank is read against the room it had."""
        n, dim = self.count, len(self.total)
        mean = self.total / n
        cov = self.outer / n - torch.outer(mean, mean)  # (D, D), biased
        std = (cov.diagonal().clamp_min(0) * n / max(n - 1, 1)).sqrt().mean().item()
        s = torch.linalg.eigvalsh(cov).clamp_min(0).sqrt()  # the centred features' singular values / sqrt(n)
        p = s / s.sum().clamp_min(1e-300)
        rank = torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum()).item()
        return {"feature_std": std, "effective_rank": rank, "effective_rank_ceiling": float(min(n - 1, dim))}


def peak_memory_gb(device: torch.device) -> float:
    """The peak memory of this process on `device`: the CUDA allocator's, or on the CPU the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB


def total_memory_gb(device: torch.device) -> float:
    """The memory `device` has: the GPU's, or on the CPU the machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**30
    import psutil

    return psutil.virtual_memory().total / 2**30


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
