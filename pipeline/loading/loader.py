"""The one loader entry: shards → training batches (images, ctx_idx, tgt_idx, labels) on the training device.

    loader = build_loader(cfg.data, sampler, seed=cfg.run.seed, rank=0, layout=plan.layout,
                          steps_per_epoch=plan.steps_per_epoch, manifest=plan.manifest, backend="torch",
                          device=device, dtype=dtype)     # plan: training.plan.RunPlan
    for batch in loader: ...          # endless: epochs follow each other; loader.epoch says which
    state = loader.state_dict()       # resume: a new loader + load_state_dict(state) continues with exactly the
                                      # samples, crops and masks the old one would have produced next
    loader.continue_from(states, world_size, batch_size, step)   # resume on another number of ranks (below)
    step = loader.start_at_epoch(epoch)   # a fresh run that goes on from an epoch (training/warm_start.py)

A backend (pipeline/loading/backend.py) yields each epoch's images; masks come from the multiblock sampler as a pure
function of (seed, batch number, rank), so they need no state of their own. An epoch is steps_per_epoch optimizer steps
of global_batch = batch_size × world_size × grad_accum samples; every rank runs the same number of batches, so ranks
stay in lock-step and an epoch ends on an optimizer step.

An epoch's samples are one global order; optimizer step j of the epoch takes its samples [j·G, (j+1)·G). A run that
resumes on another number of ranks (`continue_from`) starts that epoch at the sample where the old ranks stopped (the
`offset`): the PyTorch backend continues the same global order, so every sample of that epoch is read once; DALI's
reader cannot start mid-order, so that epoch restarts (docs/training.md, "Elastic resume").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from model.inputs import imagenet_stats
from pipeline import DataError
from pipeline.loading.backend import Backend
from pipeline.masks.sampler import MultiBlockMaskSampler
from pipeline.remote.cache import ShardCache
from pipeline.remote.fetch import RetryPolicy
from pipeline.shards.format import ManifestError, ShardFile
from pipeline.shards.manifest import Manifest, is_url, list_shards

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) normalised, training dtype, on the device
    ctx_idx: torch.Tensor  # (B, K_enc) int64
    tgt_idx: torch.Tensor  # (M, B, K_pred) int64
    labels: torch.Tensor  # (B,) int64; -1 for unlabeled data
    keys: list[str]  # sample keys (shard-independent, unique in the dataset)


def resolve_backend(name: str) -> str:
    if name != "auto":
        return name
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return "torch"
    return "dali"


class Loader:
    def __init__(self, backend: Backend, sampler: MultiBlockMaskSampler, layout, steps_per_epoch: int,
                 rank: int, device: torch.device, dtype: torch.dtype):
        self.backend, self.sampler, self.rank = backend, sampler, rank
        self.batch_size, self.world_size, self.grad_accum = layout.batch_size, layout.world_size, layout.grad_accum
        self.global_batch = layout.global_batch
        self.steps_per_epoch = steps_per_epoch  # optimizer steps
        self.batches_per_epoch = self.steps_per_epoch * self.grad_accum  # of this rank
        self.epoch_samples = self.steps_per_epoch * self.global_batch  # of all ranks
        self.device, self.dtype = device, dtype
        self.epoch, self.batch_in_epoch, self.batches_seen = 0, 0, 0
        self.offset = 0  # samples of the current epoch read before this world size took over (continue_from)
        self.mean, self.std = imagenet_stats(device)
        self.ended_epochs: list[tuple[int, tuple[int, int, int]]] = []  # this process's shard cache figures of
        self._counted = (0, 0, 0)                                        # each epoch ended: training/progress.py

    def epoch_counts(self) -> tuple[int, tuple[int, int, int]]:
        """(epoch, (bytes from the network, bytes read, reads that waited for the network)) of this process's shard
        cache in the epoch so far (the fetch-ahead for the next epoch counts in the one that fetched it); zeros
        without a cache."""
        cache = self.backend.cache
        if cache is None:
            return self.epoch, (0, 0, 0)
        now = (cache.stats.network_bytes, cache.stats.read_bytes, cache.stats.waits)
        return self.epoch, tuple(n - c for n, c in zip(now, self._counted))

    def _epoch_ended(self) -> None:
        if self.backend.cache is not None:
            epoch, counts = self.epoch_counts()
            self.ended_epochs.append((epoch, counts))
            self._counted = tuple(c + n for c, n in zip(self._counted, counts))

    def batches_in_epoch(self) -> int:
        """This rank's batches in the current epoch: whole optimizer steps of what is left after the offset."""
        return max(0, self.epoch_samples - self.offset) // self.global_batch * self.grad_accum

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batches = self.backend.epoch_batches(self.epoch, self.batch_in_epoch, self.offset, self.batches_in_epoch())
            for images, labels, keys in batches:
                ctx_idx, tgt_idx = self.sampler.sample(self.batch_size, step=self.batches_seen, rank=self.rank)
                self.batch_in_epoch += 1
                self.batches_seen += 1
                yield Batch(self._images(images), self._to_device(ctx_idx), self._to_device(tgt_idx),
                            self._to_device(labels), keys)
            self._epoch_ended()
            self.epoch, self.batch_in_epoch, self.offset = self.epoch + 1, 0, 0

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = self._to_device(images)
        if images.dtype == torch.uint8:
            images = (images.float() - self.mean) / self.std
        return images.to(self.dtype)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "batches_seen": self.batches_seen,
                "offset": self.offset, "source": self.backend.state_dict()}

    def position(self) -> tuple[int, int]:
        """(epoch, samples of it read by all ranks) after the batches yielded so far."""
        return self.epoch, self.offset + self.batch_in_epoch * self.world_size * self.batch_size

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.batches_seen, self.offset = state["batches_seen"], state["offset"]
        self.backend.load_state_dict(state["source"])

    def start_at_epoch(self, epoch: int) -> int:
        """Places a fresh loader at the start of `epoch`, as if it had read the epochs before (the masks go on with
        the batch number); returns their optimizer steps, the step the run goes on from (a warm start that continues
        an official run's epochs)."""
        self.backend.restart(epoch, 0)
        self.epoch, self.batch_in_epoch, self.offset = epoch, 0, 0
        self.batches_seen = epoch * self.batches_per_epoch
        return epoch * self.steps_per_epoch

    def continue_from(self, states: list[dict], world_size: int, batch_size: int, step: int) -> str:
        """Takes over from the loaders of another run layout: `states` are their state_dicts (one per old rank, all
        at optimizer step `step`), which had `world_size` ranks and batches of `batch_size`. Returns what it did, for
        the log.

        The epoch goes on at the first sample the old ranks had not read: exactly, with a backend that takes an
        offset (PyTorch); otherwise (DALI) the epoch restarts and the samples read in it before are read again.
        Masks continue with the batch number step × grad_accum."""
        epoch, done = saved_position(states, world_size, batch_size)
        if (self.epoch_samples - done) // self.global_batch == 0:  # no whole step of this epoch is left
            epoch, done = epoch + 1, 0
        skipped = sum(state["source"].get("skipped", 0) for state in states) if self.rank == 0 else 0
        self.backend.restart(epoch, skipped, states[0]["source"].get("order"))
        self.epoch, self.batch_in_epoch, self.batches_seen = epoch, 0, step * self.grad_accum
        where = f"epoch {epoch} at sample {done:,} of {self.epoch_samples:,}"
        if done == 0 or self.backend.takes_offset:
            self.offset = done
            return f"data: {where}, the same global sample order (every sample of the epoch once)"
        self.offset = 0
        return (f"data: {where}: the {self.backend.name} backend cannot start an epoch mid-order on "
                f"another number of ranks, so epoch {epoch} restarts: the {done:,} samples its old ranks had read in "
                f"it are read a second time, the rest once; later epochs read every sample once")


def saved_position(states: list[dict], world_size: int, batch_size: int) -> tuple[int, int]:
    """(epoch, samples of it read) of the loaders whose state_dicts are `states` (one per rank, in lock-step), which
    had `world_size` ranks reading batches of `batch_size`."""
    first = states[0]
    return first["epoch"], first["offset"] + first["batch_in_epoch"] * world_size * batch_size


def shard_files(data, manifest: Manifest) -> tuple[list[ShardFile], ShardCache | None]:
    """data.shards' shards, and the node's cache that holds them when data.shards is a URL (None for a folder)."""
    if not is_url(data.shards):
        return list_shards(data.shards, manifest), None
    bound = int(data.cache_gb * 1e9) if data.cache_gb else None
    cache = ShardCache.open(data.shards, manifest, Path(data.cache_dir), bound, RetryPolicy(data.fetch_timeout_s))
    return cache.shard_files(), cache


def build_loader(data, sampler: MultiBlockMaskSampler, seed: int, rank: int, layout, steps_per_epoch: int,
                 manifest: Manifest, backend: str, device: torch.device, dtype: torch.dtype) -> Loader:
    """The loader of `rank`.

    Args:
        data: the config's data section (config.sections.DataConfig): shards, crop and reader settings (its
            batch_size is not read: `layout` holds the batch this run trains with).
        sampler: the multiblock mask sampler (its seed and geometry are the caller's).
        seed: the run's seed, from which the backend's shuffles and crops are hashed.
        rank: this process's place among the layout's data-parallel ranks.
        layout: the per-rank batch_size, grad_accum and world_size (training.plan.BatchLayout).
        steps_per_epoch: optimizer steps per epoch, as the run plan computed them (an epoch ends on a whole step).
        manifest: data.shards' manifest (pipeline.shards.manifest.read_manifest); backend: "dali" or "torch"
            (resolve_backend).
        device, dtype: where the batches go, and the images' dtype there.
    """
    batches = steps_per_epoch * layout.grad_accum
    world_size = layout.world_size
    try:
        shards, cache = shard_files(data, manifest)
        if backend == "dali" and data.epoch_order == "cache_blocks":
            raise DataError("data.epoch_order cache_blocks: the DALI backend reads the shards in an order of its own "
                            "(every shard open from the start); set data.backend torch, or data.epoch_order auto")
        if backend == "dali":
            from pipeline.loading.dali_backend import DaliBackend

            reader = DaliBackend(data, seed, shards, batches, rank=rank, world_size=world_size, device=device,
                                 dtype=dtype, batch_size=layout.batch_size, cache=cache)
        else:
            from pipeline.loading.torch_backend import TorchBackend

            reader = TorchBackend(data, seed, shards, batches, rank=rank, world_size=world_size, device=device,
                                  batch_size=layout.batch_size, cache=cache)
    except ManifestError as err:
        raise DataError(f"data.shards {data.shards}: {err}") from err
    logger.info("data: %s backend, %d shard(s), %d samples per rank, %d batches of %d per epoch", backend,
                len(shards), manifest.total_samples // world_size, batches, layout.batch_size)
    return Loader(reader, sampler, layout, steps_per_epoch, rank, device, dtype)
