"""The target encoder's EMA under DeepSpeed: target ← m·target + (1 − m)·(the optimizer's fp32 master weights).

Under ZeRO-1/2 (ShardedTargetEMA) each rank averages its own slice of the fp32 masters, with no communication, then
all-gathers the target asynchronously; the gather overlaps the next step's context and predictor forwards. With one
rank the slice is the whole target, averaged in place: nothing is gathered. Elsewhere
(ZeRO-3, CPU offload, no ZeRO) GatheredTargetEMA reads each full fp32 master, synchronously. The frozen sin-cos
pos_embed stays fp32 in the target, as in the official EMA. Design and measurements: docs/training.md.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from model.ema import ema_update

logger = logging.getLogger(__name__)

# torch 2.14 renamed all_gather_into_tensor (and warns at its first call); the GPU host's torch has only the old name
ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _TargetEMA:
    """What train.py calls: update(momentum) after each optimizer step; wait() before reading the target; loaded()
    after loading it; `with ema:` around the loop, so that nothing is in flight when it ends or raises."""

    def wait(self) -> None:
        """The target is up to date when update returns (overridden where it is not)."""

    def loaded(self) -> None:
        """Nothing is kept beside the target's own parameters (overridden where something is)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.wait()


class GatheredTargetEMA(_TargetEMA):
    """ZeRO-3, CPU offload or no ZeRO: each parameter's full fp32 master, synchronously. Under ZeRO-3 and offload that
    is deepspeed.utils.safe_get_full_fp32_param (collective under ZeRO-3); without ZeRO, the optimizer's replicated
    fp32 copy (bf16 training) or the parameter itself (fp32 training)."""

    def __init__(self, engine, target: torch.nn.Module):
        opt = engine.optimizer
        self.pairs = [(t, p) for t, p in zip(target.parameters(), engine.module.context_encoder.parameters(),
                                             strict=True) if p.requires_grad]
        self.replicated = {p: m for low, high in zip(getattr(opt, "fp16_groups", []), getattr(opt, "fp32_groups", []))
                           for p, m in zip(low, high)}  # no ZeRO, bf16: DeepSpeed's unfused optimizer keeps these
        self.optimizer_name = type(opt).__name__

    def master(self, p: torch.Tensor) -> torch.Tensor:
        from deepspeed.utils import safe_get_full_fp32_param

        if p in self.replicated:
            return self.replicated[p]
        full = safe_get_full_fp32_param(p)
        if full is not None:
            return full
        if p.dtype == torch.float32:
            return p  # fp32 training without ZeRO: the parameter is the master
        raise RuntimeError(f"target EMA: no fp32 master weight found for a {p.dtype} parameter of shape "
                           f"{tuple(p.shape)} under DeepSpeed's {self.optimizer_name}; use ZeRO stage 1, 2 or 3")

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        ema_update([t for t, _ in self.pairs], [self.master(p) for _, p in self.pairs], momentum)


class ShardedTargetEMA(_TargetEMA):
    """ZeRO-1/2: the EMA of this rank's slice of the flat fp32 masters, then an async all-gather of the target."""

    def __init__(self, engine, target: torch.nn.Module):
        opt = engine.optimizer
        targets = dict(zip(engine.module.context_encoder.parameters(), target.parameters(), strict=True))
        self.groups = []  # (this rank's slice of the flat fp32 target, this rank's fp32 masters), one per group
        self.gathered = []  # (that slice, the full flat target, process group, rank): groups spread over ranks
        for i, masters in enumerate(opt.single_partition_of_fp32_groups):
            flat, group = opt.bit16_groups_flat[i], opt.real_dp_process_group[i]
            full = torch.zeros(flat.numel(), dtype=torch.float32, device=masters.device)
            for p in opt.bit16_groups[i]:  # the target's fp32 values at each context parameter's place in `flat`
                if p in targets:
                    t = targets[p]
                    view = full.narrow(0, (p.data_ptr() - flat.data_ptr()) // flat.element_size(), p.numel())
                    view.copy_(t.detach().reshape(-1))
                    t.data = view.view_as(t)
            rank, size = dist.get_rank(group), masters.numel()
            alone = dist.get_world_size(group) == 1  # the slice is the whole: averaged in place, nothing to gather
            mine = full.narrow(0, 0, size) if alone else full.narrow(0, rank * size, size).clone()
            # Predictor parameters share the groups: their slots are averaged too and never read (4% of ViT-H's).
            self.groups.append((mine, masters))
            if not alone:
                self.gathered.append((mine, full, group, rank))
        self.pending = []

    @staticmethod
    def fits(engine) -> bool:
        """Whether DeepSpeed's optimizer has the ZeRO-1/2 layout this class reads: fp32 masters in one equal slice
        per rank of each flat bf16 group, on the device."""
        opt = engine.optimizer
        if getattr(opt, "single_partition_of_fp32_groups", None) is None or getattr(opt, "cpu_offload", False):
            return False
        return all(len({t.numel() for t in parts}) == 1 for parts in opt.parallel_partitioned_bit16_groups)

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        self.wait()
        ema_update([mine for mine, _ in self.groups], [masters for _, masters in self.groups], momentum)
        self.pending = [ALL_GATHER(full, mine, group=group, async_op=True) for mine, full, group, _ in self.gathered]

    def wait(self) -> None:
        """Blocks (on the GPU: makes the current stream wait) until the target holds the last update everywhere."""
        for work in self.pending:
            work.wait()
        self.pending = []

    def loaded(self) -> None:
        """After target.load_state_dict (which wrote through the views): this rank's slices from the loaded values."""
        for mine, full, _, rank in self.gathered:
            mine.copy_(full.narrow(0, rank * mine.numel(), mine.numel()))


def target_ema(engine, target: torch.nn.Module) -> ShardedTargetEMA | GatheredTargetEMA:
    """The fastest EMA the engine's optimizer allows."""
    if ShardedTargetEMA.fits(engine):
        ema = ShardedTargetEMA(engine, target)
        logger.info("target EMA: on this rank's slice of the fp32 masters, then %s",
                    "one async all-gather per group" if ema.gathered else "nothing to gather (one rank)")
        return ema
    logger.info("target EMA: full fp32 masters gathered per parameter (this ZeRO stage or offload has no slices)")
    return GatheredTargetEMA(engine, target)
