"""A model (not a measurement) of per-GPU efficiency at 8 GPUs and across nodes for train.py under ZeRO-2.

Inputs: a step time, the step's FLOPs split into the target forward, the context and predictor forwards and the
backward (counted by torch on the meta device), the bytes each collective moves per optimizer step, and link
bandwidths as parameters. Each collective is a ring; what the compute does not hide is exposed. Assumptions and
results: docs/benchmarks.md and docs/training.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# Achievable collective bus bandwidths, GB/s per GPU (parameters: change them to your fabric's nccl-tests busbw).
NVLINK_GBPS = 360.0  # H100/H200 SXM, NVLink 4 (450 GB/s per direction nominal)
NIC_GBPS = 45.0  # one 400 Gb/s NIC per GPU (50 GB/s nominal)
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class StepShape:
    trained_params: int  # context encoder + predictor (what the optimizer updates)
    target_flops: float  # the target encoder's forward, one image
    forward_flops: float  # context encoder + predictor forward (and the loss)
    backward_flops: float

    @property
    def total_flops(self) -> float:
        return self.target_flops + self.forward_flops + self.backward_flops

    @property
    def backward_share(self) -> float:
        return self.backward_flops / self.total_flops

    @property
    def forward_share(self) -> float:
        """The context encoder and predictor forwards: what the target's all-gather overlaps."""
        return self.forward_flops / self.total_flops


def step_shape(cfg, ctx_tokens: int = 69, tgt_tokens: int = 43, masks: int = 4) -> StepShape:
    """FLOPs of one image's step, counted by torch on the meta device (no memory, no time), at the official mean mask
    lengths on a 16×16 grid (scaled by the grid for other resolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    from config import grid_size
    from model.jepa import build_jepa, target_features

    rows, cols = grid_size(cfg)
    scale = rows * cols / 256
    ctx_tokens, tgt_tokens = max(1, round(ctx_tokens * scale)), max(1, round(tgt_tokens * scale))
    with torch.device("meta"):
        model, target = build_jepa(cfg.model, cfg.data.crop_size)
    model.to("meta"), target.to("meta")  # buffers made on the CPU follow
    s = cfg.data.crop_size
    images = torch.empty(1, 3, s, s, device="meta")
    ctx = torch.zeros(1, ctx_tokens, dtype=torch.long, device="meta")
    tgt = torch.zeros(masks, 1, tgt_tokens, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as target_forward:
        targets = target_features(target, images, tgt)
    with FlopCounterMode(display=False) as forward:
        loss = model(images, ctx, tgt, targets)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return StepShape(trained, target_forward.get_total_flops(), forward.get_total_flops(), backward.get_total_flops())


def ring_s(nbytes: float, n: int, gbps: float) -> float:
    """Seconds of a ring reduce-scatter or all-gather of `nbytes` over n GPUs at `gbps` bus bandwidth."""
    return (n - 1) / n * nbytes / (gbps * 1e9) if n > 1 else 0.0


def efficiency(shape: StepShape, step_s: float, n: int, bucket_params: int = 50_000_000,
               overlap_target: bool = True) -> dict:
    """Exposed seconds of each collective and the per-GPU efficiency at n GPUs (`overlap_target` False: the target's
    gather waited for at once, as before target_ema.py)."""
    gbps = NVLINK_GBPS if n <= GPUS_PER_NODE else NIC_GBPS
    p = shape.trained_params
    bf16_ring = ring_s(2 * p, n, gbps)  # the gradient reduce-scatter and the parameter all-gather alike
    last_bucket = ring_s(2 * min(bucket_params, p), n, gbps)
    hidden = shape.forward_share * step_s if overlap_target else 0.0
    exposed = {"grad reduce-scatter": last_bucket + max(0.0, bf16_ring - last_bucket - shape.backward_share * step_s),
               "param all-gather": bf16_ring,
               "target all-gather": max(0.0, ring_s(4 * p, n, gbps) - hidden)}
    total = sum(exposed.values())
    return {"gpus": n, "link_GBps": gbps, "exposed_ms": {k: 1e3 * v for k, v in exposed.items()},
            "efficiency": step_s / (step_s + total)}


def run(cfg, measured_step_s: float | None = None, batch: int | None = None) -> dict:
    """Prints the model for the config's model at the anchors' step times (and at a measured one when given)."""
    shape = step_shape(cfg)
    batch = batch or cfg.data.batch_size
    steps = {"official code, H200 anchor": 0.40, "750 img/s target": batch / 750}
    if measured_step_s:
        steps = {"measured in this run": measured_step_s, **steps}
    print(f"model of multi-GPU efficiency (ZeRO-2, bf16; a model, not a measurement): {shape.trained_params / 1e6:.1f}M "
          f"trained params; of the step's FLOPs the backward is {100 * shape.backward_share:.0f}%, the context and "
          f"predictor forwards {100 * shape.forward_share:.0f}%; batch {batch} per GPU; NVLink {NVLINK_GBPS:.0f} GB/s, "
          f"NIC {NIC_GBPS:.0f} GB/s per GPU; exposed ms per collective")
    print(f"{'step time':<36} {'GPUs':>5} {'grad RS':>8} {'param AG':>9} {'target AG':>10} {'efficiency':>11} "
          f"{'(target AG not overlapped)':>27}")
    rows = []
    for name, step_s in steps.items():
        for n in (8, 16, 64):
            row = efficiency(shape, step_s, n)
            serial = efficiency(shape, step_s, n, overlap_target=False)
            ms = row["exposed_ms"]
            print(f"{name + f' ({step_s:.3f} s)':<36} {n:>5} {ms['grad reduce-scatter']:>8.1f} "
                  f"{ms['param all-gather']:>9.1f} {ms['target all-gather']:>10.1f} {100 * row['efficiency']:>10.1f}% "
                  f"{100 * serial['efficiency']:>26.1f}%")
            rows.append({"step": name, "step_s": step_s, **row, "efficiency_target_not_overlapped": serial["efficiency"]})
    return {"trained_params": shape.trained_params, "backward_share": shape.backward_share,
            "forward_share": shape.forward_share, "nvlink_GBps": NVLINK_GBPS, "nic_GBps": NIC_GBPS, "rows": rows}
