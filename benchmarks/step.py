"""Step suite: the project's training step beside a plain-PyTorch reference step, same model, batch, masks and device.

Ours is train.py's step (training/engine.py: the DeepSpeed engine, AdamW, the kernels switch, the EMA from the fp32
masters); the reference is written the way the official I-JEPA code is (fp32 weights under bf16 autocast,
explicit-softmax attention, one gather per mask then cat, a Python-loop EMA). Both see the config's masks; ours is
also timed with static shapes. Figures: step time, images/s per GPU, counted FLOPs, TFLOP/s, MFU (known GPUs), peak
memory, images per GPU-hour and the GPU-hours of the config's epochs (docs/benchmarks.md).
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import statistics
import time
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

import kernels
from benchmarks.common import run_or_error
from config import ConfigError, mask_sampler, training_dtype
from model.jepa import build_jepa
from pipeline.loading.loader import Batch
from pipeline.shards.format import ManifestError
from pipeline.shards.manifest import read_manifest
from training.distributed import setup_distributed, single_process_env
from training.engine import build_engine, micro_step, param_groups
from training.metrics import count_flops, peak_tflops
from training.plan import BatchLayout
from training.target_ema import target_ema

logger = logging.getLogger(__name__)

IMAGENET_1K = 1_281_167
REFERENCE = "reference (official-style)"  # the row every other is compared with


# ---------------------------------------------------------------------------------------------- the reference step

def apply_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """The official helper: one gather per mask, then cat along the batch."""
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).repeat(1, 1, x.size(-1))) for m in masks], dim=0)


def reference_encoder(enc, images, masks=None):
    x = enc.patch_embed(images) + enc.pos_embed
    if masks is not None:
        x = apply_masks(x, masks)
    for blk in enc.blocks:
        x = blk(x)
    return enc.norm(x)


def reference_predictor(pred, z, ctx, tgt_masks):
    b = z.size(0)
    x = pred.predictor_embed(z)
    pos = pred.predictor_pos_embed.repeat(b, 1, 1)
    x = x + apply_masks(pos, [ctx])
    _, n_ctx, d = x.shape
    pos_embs = apply_masks(pos, tgt_masks)
    tokens = pred.mask_token.repeat(pos_embs.size(0), pos_embs.size(1), 1) + pos_embs
    x = torch.cat([x.repeat(len(tgt_masks), 1, 1), tokens], dim=1)
    for blk in pred.predictor_blocks:
        x = blk(x)
    return pred.predictor_proj(pred.predictor_norm(x)[:, n_ctx:])


class ReferenceStep:
    """One official-style training step (optimizer step + EMA) per call."""

    def __init__(self, cfg, device: torch.device, world_size: int = 1):  # one process: world_size is not used
        with torch.device(device):
            model, target = build_jepa(cfg.model, cfg.data.crop_size)
        self.model, self.target = model.to(device), target.to(device)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.optimization.weight_decay), lr=cfg.optimization.lr)
        self.device, self.momentum = device, cfg.ema.momentum[0]

    def __call__(self, images, ctx, tgt):
        tgt_masks = list(tgt)
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            with torch.no_grad():
                h = reference_encoder(self.target, images)
                h = apply_masks(F.layer_norm(h, (h.size(-1),)), tgt_masks)
            z = reference_encoder(self.model.context_encoder, images, [ctx])
            loss = F.smooth_l1_loss(reference_predictor(self.model.predictor, z, ctx, tgt_masks), h)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            m = self.momentum
            for q, k in zip(self.model.context_encoder.parameters(), self.target.parameters()):
                k.data.mul_(m).add_((1.0 - m) * q.detach().data)
        return loss.detach()


# ------------------------------------------------------------------------------------------------------ our step

class OurStep:
    """train.py's step: DeepSpeed engine + fused AdamW + EMA from the fp32 masters, one optimizer step per call."""

    def __init__(self, cfg, device: torch.device, world_size: int):
        layout = BatchLayout(cfg.data.batch_size, cfg.optimization.grad_accum, world_size)
        self.engine, self.optimizer, self.target = build_engine(cfg, layout, device)
        self.ema = target_ema(self.engine, self.target)
        self.dtype = training_dtype(cfg)
        self.momentum = cfg.ema.momentum[0]

    def __call__(self, images, ctx, tgt):
        batch = Batch(images, ctx, tgt, labels=torch.empty(0), keys=[])
        loss = micro_step(self.engine, self.ema, self.target, batch, self.dtype)
        self.ema.update(self.momentum)
        return loss

    def close(self) -> None:
        """Waits for the last target all-gather (a process must not exit with one in flight)."""
        self.ema.wait()


# ------------------------------------------------------------------------------------------------------ measuring

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, cfg, device, masks, warmup: int, repeat: int) -> dict:
    """Median step time, FLOPs (one counted step), peak memory, for `step(images, ctx, tgt)`."""
    b, s = cfg.data.batch_size, cfg.data.crop_size
    gen = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(b, 3, s, s, generator=gen).to(device)
    on_device = [(c.to(device), t.to(device)) for c, t in masks]
    flops = count_flops(lambda: step(images, *on_device[0]))
    for i in range(warmup):
        step(images, *on_device[i % len(on_device)])
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        step(images, *on_device[(warmup + i) % len(on_device)])
        _sync(device)
        times.append(time.perf_counter() - start)
    t = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    syncs = host_syncs(lambda: step(images, *on_device[0]), device)
    tflops, matmul_peak = flops / t / 1e12, peak_tflops(device)
    return {"step_time_s": t, "images_per_s": b / t, "flops_per_step": flops, "tflops": tflops,
            "mfu": tflops / matmul_peak if matmul_peak else None, "peak_memory_gib": peak,
            "images_per_gpu_hour": b / t * 3600, "repeat": repeat, "host_syncs_per_step": syncs}


def host_syncs(call, device) -> int | None:
    """The host synchronisations one call makes, counted by CUDA's sync debug mode (one warning each); None off CUDA,
    where nothing waits for a device."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def dataset_size(cfg) -> tuple[int, str]:
    try:
        return read_manifest(cfg.data.shards, check="none").total_samples, f"manifest of {cfg.data.shards}"
    except ManifestError:  # no shards here: the projection uses ImageNet-1K, and says so
        return IMAGENET_1K, "ImageNet-1K (the config's shards are not here)"


def timing(device: torch.device) -> tuple[int, int]:
    """(warm-up steps, timed steps) on this device."""
    return (5, 20) if device.type == "cuda" else (2, 5)


def reference_kernels() -> dict[str, str]:
    """Each kernel group's reference implementation: what the official-style step runs."""
    return {name: op.reference for name, op in kernels.REGISTRY.items()}


def time_path(build, cfg, device: torch.device, world_size: int, impls: dict) -> dict:
    """measure() of `build(cfg, device, world_size)` with the kernels `impls`, seeded from run.seed, on the masks of
    cfg's sampler; the path's memory is freed before the next one is built."""
    warmup, repeat = timing(device)
    chosen = kernels.configure(device=device, **impls)
    sampler = mask_sampler(cfg)
    masks = [sampler.sample(cfg.data.batch_size, step=i) for i in range(warmup + repeat)]
    torch.manual_seed(cfg.run.seed)
    step = build(cfg, device, world_size)
    try:
        return {**measure(step, cfg, device, masks, warmup, repeat), "kernels": chosen}
    finally:
        if hasattr(step, "close"):
            step.close()
        del step
        free_memory(device)


def free_memory(device: torch.device) -> None:
    gc.collect()  # DeepSpeed's engine holds reference cycles: free a path's memory before the next is built
    if device.type == "cuda":
        torch.cuda.empty_cache()


def try_path(measure: Callable[[], dict], device: torch.device) -> dict:
    """run_or_error(measure) (benchmarks/common.py), freeing a failed path's memory before the next path is built. A
    setting this device cannot take (ValueError, ConfigError: Triton on the CPU) is said without a traceback."""
    row = run_or_error(measure, quiet=(ValueError, ConfigError))
    if "error" in row:
        free_memory(device)
    return row


def run(cfg) -> dict:
    single_process_env()
    device, _, world_size = setup_distributed(cfg.run.device)
    fixed_cfg = dataclasses.replace(cfg, mask=dataclasses.replace(cfg.mask, length_policy="fixed"))
    ours = dataclasses.asdict(cfg.kernels)
    plans = [(REFERENCE, ReferenceStep, cfg, reference_kernels()),
             ("ours", OurStep, cfg, ours),
             ("ours, static shapes (fixed lengths)", OurStep, fixed_cfg, ours)]
    print_header(cfg, device)
    results = {}
    for name, build, path_cfg, impls in plans:  # each row printed when measured: a run cut short keeps its rows
        results[name] = try_path(lambda: time_path(build, path_cfg, device, world_size, impls), device)
        print_row(cfg, name, results[name], results[REFERENCE])
    print_footer(device, results)
    return results


def print_header(cfg, device) -> None:
    n, source = dataset_size(cfg)
    print(f"step: {cfg.model.arch} patch {cfg.model.patch_size}, {cfg.data.crop_size} px, batch "
          f"{cfg.data.batch_size} per GPU, {cfg.optimization.precision}, ZeRO "
          f"{cfg.deepspeed.get('zero_optimization', {}).get('stage', 0)}, on {device.type}; GPU-hours for "
          f"{cfg.optimization.epochs} epochs of {n:,} images ({source})")
    print(f"{'path':<38}{'step s':>9}{'img/s/GPU':>11}{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}{'img/GPU-h':>12}"
          f"{'GPU-h':>10}{'× ref':>7}", flush=True)


def print_row(cfg, name: str, r: dict, ref: dict) -> None:
    """One path's line; adds the GPU-hours of the config's epochs to `r`."""
    if "error" in r:
        print(f"{name:<38} failed: {r['error'][:200]}", flush=True)
        return
    gpu_hours = cfg.optimization.epochs * dataset_size(cfg)[0] / r["images_per_s"] / 3600
    r["gpu_hours_for_epochs"] = gpu_hours
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    mem = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
    ratio = f"{r['images_per_s'] / ref['images_per_s']:>6.2f}×" if "images_per_s" in ref else "   n/a"
    print(f"{name:<38}{r['step_time_s']:>9.3f}{r['images_per_s']:>11.1f}{r['tflops']:>9.2f}{mfu:>7}{mem:>10}"
          f"{r['images_per_gpu_hour']:>12,.0f}{gpu_hours:>10.3g}{ratio}", flush=True)


def print_footer(device, results: dict) -> None:
    measured = {name: r for name, r in results.items() if "error" not in r}
    if device.type == "cuda":
        print("host syncs per step (CUDA sync debug mode): " + ", ".join(
            f"{name} {r['host_syncs_per_step']}" for name, r in measured.items()))
    peak = peak_tflops(device)
    flops = ", ".join(f"{name} {r['flops_per_step'] / 1e12:.3f} T" for name, r in measured.items()
                      if name in (REFERENCE, "ours"))
    print(f"FLOPs per step counted with torch.utils.flop_counter: {flops or 'none measured'}; MFU against "
          f"{peak or 'no known'} TFLOP/s peak{'' if peak else ' (CPU: MFU not reported)'}; the headline is 'ours' "
          f"(official mask semantics)")
