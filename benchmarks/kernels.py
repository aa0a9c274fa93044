"""Kernel suite: every implementation of every registered kernel (kernels/registry.py) at its ViT-H/14 cases, the
plain-PyTorch reference timed in the same run.

Each case reports forward and forward+backward time and the rate of its useful work over each: GB/s for memory-bound
ops, beside a device-to-device copy measured in the same run (target: >= 80% of it), or TFLOP/s for attention
(target: Triton >= the best SDPA backend). On CUDA the batch is 128 (bf16); on the CPU it is 2 and the CUDA-only
implementations are left out (Triton only interprets there, for the tests).
"""
from __future__ import annotations

import logging

import torch

import kernels
from benchmarks.common import error_line, time_call

logger = logging.getLogger(__name__)

GPU_BATCH, CPU_BATCH = 128, 2


def _seconds(fn, device: torch.device, repeat: int) -> float:
    """Median seconds per call; on CUDA each timed call ends in a synchronize, after warm-up (autotuning included)."""
    if device.type == "cuda":
        def call():
            fn()
            torch.cuda.synchronize()
        return time_call(call, repeat=repeat, warmup=3)["median_s"]
    return time_call(fn, repeat=repeat, warmup=1)["median_s"]


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy, bytes read + written per second."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / _seconds(lambda: dst.copy_(src), device, repeat=20)


def _forward(op, inputs):
    def run():
        with torch.no_grad():
            op(*inputs)
    return run


def _forward_backward(op, inputs, leaves):
    """op forward then backward with a fixed output gradient into `leaves`."""
    grad = torch.randn_like(op(*inputs))
    return lambda: torch.autograd.grad(op(*inputs), leaves, grad)


def time_case(kernel: str, case, impl: str, op, device: torch.device, copy_bps: float | None, repeat: int) -> dict:
    """One implementation at one case: ms and rates; an `error` instead when it cannot run the case."""
    row = {"kernel": kernel, "case": case.name, "impl": impl, "unit": case.unit}
    scale = 1e9 if case.unit == "B" else 1e12  # GB/s or TFLOP/s
    try:
        fwd = _seconds(_forward(op, case.inputs), device, repeat)
        row.update(fwd_ms=fwd * 1e3, fwd_rate=case.work[0] / fwd / scale)
        if case.leaves:
            both = _seconds(_forward_backward(op, case.inputs, case.leaves), device, repeat)
            row.update(fwd_bwd_ms=both * 1e3, fwd_bwd_rate=sum(case.work) / both / scale)
    except Exception as err:  # an SDPA backend that does not take this shape, out of memory, a Triton kernel that
        # does not compile on this card: the row records it and the other rows are still measured
        row["error"] = error_line(err, limit=120)
    if copy_bps and case.unit == "B" and "error" not in row:
        row["fwd_of_copy"] = row["fwd_rate"] * scale / copy_bps
        if "fwd_bwd_rate" in row:
            row["fwd_bwd_of_copy"] = row["fwd_bwd_rate"] * scale / copy_bps
    return row


def _print(rows: list[dict]) -> None:
    """One line per row; each rate also as a ratio to the reference row of the same case."""
    ref = {r["case"]: r for r in rows if r["impl"] == kernels.REGISTRY[r["kernel"]].reference}
    for r in rows:
        if "error" in r:
            print(f"  {r['case']:38s} {r['impl']:15s} n/a: {r['error']}")
            continue
        unit = "GB/s" if r["unit"] == "B" else "TFLOP/s"
        cells = []
        for key in ("fwd_ms", "fwd_rate", "fwd_of_copy", "fwd_bwd_ms", "fwd_bwd_rate", "fwd_bwd_of_copy"):
            if key in r:
                base = ref.get(r["case"], {}).get(key)
                ratio = f" ({r[key] / base:.2f}x ref)" if base and key.endswith("rate") else ""
                cells.append(f"{key.replace('rate', unit)} {r[key]:9.3f}{ratio}")
        print(f"  {r['case']:38s} {r['impl']:15s} " + " | ".join(cells))


def run(cfg=None) -> dict:
    """Times every implementation of each registered kernel on this machine's device; returns the rows printed.
    `cfg` is accepted for the bench.py interface and not used (the cases are ViT-H/14's)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch, repeat = (GPU_BATCH, 20) if device.type == "cuda" else (CPU_BATCH, 3)
    copy_bps = copy_bandwidth(device) if device.type == "cuda" else None
    if copy_bps:
        print(f"device copy bandwidth (read + write): {copy_bps / 1e9:.0f} GB/s")
    rows, auto = [], {}
    for name, op in kernels.REGISTRY.items():
        auto[name] = op.auto[device.type]
        print(f"\n{name}, batch {batch} on {device.type} (x_of_copy: fraction of the copy bandwidth, target >= 0.80)")
        group = []
        for case in op.bench_cases(device, batch):
            for impl, fn in case.ops.items():
                if device.type == "cpu" and impl in op.cuda_only:
                    continue
                group.append(time_case(name, case, impl, fn, device, copy_bps, repeat))
        _print(group)
        rows += group
    print(f"\nauto picks on {device.type}: {auto} (each kernel module's KERNEL.auto)")
    return {"device": device.type, "batch": batch, "copy_GBps": copy_bps / 1e9 if copy_bps else None, "rows": rows,
            "auto": auto}
