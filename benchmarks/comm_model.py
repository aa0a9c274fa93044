"""A model (not a measurement) of per-GPU efficiency at 8 GPUs and across nodes for train.py under ZeRO-2.

Inputs: a step time (measured on one GPU, or an anchor), the step's FLOPs split into forward and backward (counted by
torch on the meta device for the config's model and the official mask lengths), the bytes each collective moves per
optimizer step (from the parameter count), and link bandwidths as parameters.

Collectives per optimizer step, each a ring over n GPUs moving (n-1)/n × S bytes through every GPU's link:
  1. gradient reduce-scatter, bf16, 2 bytes/param: bucketed (reduce_bucket_size) and overlapped with the backward
     (overlap_comm); the last bucket always runs after the backward ends;
  2. the bf16 parameter all-gather after the optimizer step, 2 bytes/param: exposed;
  3. the EMA's all-gather of the fp32 masters (train.fp32_master_views), 4 bytes/param: exposed.
Efficiency = step / (step + exposed communication). Across nodes the ring runs at the NIC's bandwidth (one NIC per GPU,
rail-optimised), inside a node at NVLink's.
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
    forward_flops: float  # target encoder + context encoder + predictor, one image
    backward_flops: float

    @property
    def backward_share(self) -> float:
        return self.backward_flops / (self.forward_flops + self.backward_flops)


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
        model, target = build_jepa(cfg)
    model.to("meta"), target.to("meta")  # buffers made on the CPU follow
    s = cfg.data.crop_size
    images = torch.empty(1, 3, s, s, device="meta")
    ctx = torch.zeros(1, ctx_tokens, dtype=torch.long, device="meta")
    tgt = torch.zeros(masks, 1, tgt_tokens, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as forward:
        loss = model(images, ctx, tgt, target_features(target, images, tgt))
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return StepShape(trained, forward.get_total_flops(), backward.get_total_flops())


def ring_s(nbytes: float, n: int, gbps: float) -> float:
    """Seconds of a ring reduce-scatter or all-gather of `nbytes` over n GPUs at `gbps` bus bandwidth."""
    return (n - 1) / n * nbytes / (gbps * 1e9) if n > 1 else 0.0


def efficiency(shape: StepShape, step_s: float, n: int, bucket_params: int = 50_000_000,
               ema_bytes_per_param: int = 4) -> dict:
    """Exposed seconds of each collective and the per-GPU efficiency at n GPUs."""
    gbps = NVLINK_GBPS if n <= GPUS_PER_NODE else NIC_GBPS
    p = shape.trained_params
    reduce = ring_s(2 * p, n, gbps)
    last_bucket = ring_s(2 * min(bucket_params, p), n, gbps)
    backward_s = shape.backward_share * step_s
    exposed = {"grad reduce-scatter": last_bucket + max(0.0, reduce - last_bucket - backward_s),
               "param all-gather": ring_s(2 * p, n, gbps),
               "EMA master all-gather": ring_s(ema_bytes_per_param * p, n, gbps)}
    total = sum(exposed.values())
    return {"gpus": n, "link_GBps": gbps, "exposed_ms": {k: 1e3 * v for k, v in exposed.items()},
            "efficiency": step_s / (step_s + total)}


def run(cfg, measured_step_s: float | None = None, batch: int | None = None) -> dict:
    """Prints the model for the config's model at the anchors' step times (and at a measured one when given)."""
    shape = step_shape(cfg)
    batch = batch or cfg.data.batch_size
    steps = {"official code, H200 (anchor: 0.40 s)": 0.40, "750 img/s target": batch / 750}
    if measured_step_s:
        steps = {"measured in this run": measured_step_s, **steps}
    print(f"model of multi-GPU efficiency (ZeRO-2, bf16; a model, not a measurement): {shape.trained_params / 1e6:.1f}M "
          f"trained params, backward {100 * shape.backward_share:.0f}% of the step's FLOPs, batch {batch} per GPU, "
          f"NVLink {NVLINK_GBPS:.0f} GB/s, NIC {NIC_GBPS:.0f} GB/s per GPU")
    print(f"{'step time':<40} {'GPUs':>5} {'RS ms':>6} {'AG ms':>6} {'EMA ms':>7} {'eff.':>6} {'eff., bf16 EMA':>15}")
    rows = []
    for name, step_s in steps.items():
        for n in (8, 16, 64):
            row = efficiency(shape, step_s, n)
            half = efficiency(shape, step_s, n, ema_bytes_per_param=2)
            ms = row["exposed_ms"]
            print(f"{name + f' ({step_s:.3f} s)':<40} {n:>5} {ms['grad reduce-scatter']:>6.1f} "
                  f"{ms['param all-gather']:>6.1f} {ms['EMA master all-gather']:>7.1f} "
                  f"{100 * row['efficiency']:>5.1f}% {100 * half['efficiency']:>14.1f}%")
            rows.append({"step": name, "step_s": step_s, **row, "efficiency_bf16_ema": half["efficiency"]})
    return {"trained_params": shape.trained_params, "backward_share": shape.backward_share,
            "nvlink_GBps": NVLINK_GBPS, "nic_GBps": NIC_GBPS, "rows": rows}
