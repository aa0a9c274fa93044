"""The one loader entry: shards → training batches (images, ctx_idx, tgt_idx, labels) on the training device.

    layout = BatchLayout(batch_size=128, grad_accum=1, world_size=8)
    loader = build_loader(cfg.data, sampler, seed=cfg.run.seed, rank=0, layout=layout, manifest=read_manifest(shards),
                          backend="torch", device=device, dtype=dtype)
    for batch in loader: ...          # endless: epochs follow each other; loader.epoch says which
    state = loader.state_dict()       # resume: a new loader + load_state_dict(state) continues with exactly the
                                      # samples, crops and masks the old one would have produced next
    loader.continue_from(states, world_size, batch_size, step)   # resume on another number of ranks (below)

A source (pipeline/source.py) yields each epoch's images; masks come from the multiblock sampler as a pure function
of (seed, batch number, rank), so they need no state of their own. An epoch is steps_per_epoch optimizer steps of
global_batch = batch_size × world_size × grad_accum samples; every rank runs the same number of batches, so ranks
stay in lock-step and an epoch ends on an optimizer step.

An epoch's samples are one global order; optimizer step j of the epoch takes its samples [j·G, (j+1)·G). A run that
resumes on another number of ranks (`continue_from`) starts that epoch at the sample where the old ranks stopped (the
`offset`): the PyTorch source continues the same global order, so every sample of that epoch is read once; DALI's
reader cannot start mid-order, so that epoch restarts (docs/training.md, "Elastic resume").
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from pipeline import DataError
from pipeline.masks import MultiBlockMaskSampler
from pipeline.remote import RetryPolicy
from pipeline.shard_cache import ShardCache, remote_manifest
from pipeline.shards import Manifest, ManifestError, ShardFile, is_url, list_shards, read_manifest
from pipeline.source import Source, imagenet_stats

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


@dataclass(frozen=True)
class BatchLayout:
    """How one optimizer step is cut: `batch_size` samples per rank and micro step, `grad_accum` micro steps per
    optimizer step, `world_size` data-parallel ranks. The one place the global batch and the steps per epoch are
    computed."""

    batch_size: int
    grad_accum: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world_size

    def steps_per_epoch(self, num_samples: int, shards: str) -> int:
        """Optimizer steps in an epoch of `num_samples` (the last partial global batch is dropped); a DataError
        naming the `shards` folder when there is not one."""
        steps = num_samples // self.global_batch
        if steps < 1:
            raise DataError(f"data.shards {shards}: {num_samples} samples make no full global batch of "
                            f"{self.global_batch} (data.batch_size {self.batch_size} x optimization.grad_accum "
                            f"{self.grad_accum} x {self.world_size} ranks): use more data or a smaller "
                            f"data.batch_size")
        return steps


class Loader:
    def __init__(self, source: Source, sampler: MultiBlockMaskSampler, layout: BatchLayout, steps_per_epoch: int,
                 rank: int, device: torch.device, dtype: torch.dtype):
        self.source, self.sampler, self.rank = source, sampler, rank
        self.batch_size, self.world_size, self.grad_accum = layout.batch_size, layout.world_size, layout.grad_accum
        self.global_batch = layout.global_batch
        self.steps_per_epoch = steps_per_epoch  # optimizer steps
        self.batches_per_epoch = self.steps_per_epoch * self.grad_accum  # of this rank
        self.epoch_samples = self.steps_per_epoch * self.global_batch  # of all ranks
        self.device, self.dtype = device, dtype
        self.epoch, self.batch_in_epoch, self.batches_seen = 0, 0, 0
        self.offset = 0  # samples of the current epoch read before this world size took over (continue_from)
        self.mean, self.std = imagenet_stats(device)

    def batches_in_epoch(self) -> int:
        """This rank's batches in the current epoch: whole optimizer steps of what is left after the offset."""
        return max(0, self.epoch_samples - self.offset) // self.global_batch * self.grad_accum

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batches = self.source.epoch_batches(self.epoch, self.batch_in_epoch, self.offset, self.batches_in_epoch())
            for images, labels, keys in batches:
                ctx_idx, tgt_idx = self.sampler.sample(self.batch_size, step=self.batches_seen, rank=self.rank)
                self.batch_in_epoch += 1
                self.batches_seen += 1
                yield Batch(self._images(images), self._to_device(ctx_idx), self._to_device(tgt_idx),
                            self._to_device(labels), keys)
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
                "offset": self.offset, "source": self.source.state_dict()}

    def position(self) -> tuple[int, int]:
        """(epoch, samples of it read by all ranks) after the batches yielded so far."""
        return self.epoch, self.offset + self.batch_in_epoch * self.world_size * self.batch_size

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.batches_seen, self.offset = state["batches_seen"], state.get("offset", 0)
        self.source.load_state_dict(state["source"])

    def continue_from(self, states: list[dict], world_size: int, batch_size: int, step: int) -> str:
        """Takes over from the loaders of another run layout: `states` are their state_dicts (one per old rank, all
        at optimizer step `step`), which had `world_size` ranks and batches of `batch_size`. Returns what it did, for
        the log.

        The epoch goes on at the first sample the old ranks had not read: exactly, with a source that takes an
        offset (PyTorch); otherwise (DALI) the epoch restarts and the samples read in it before are read again.
        Masks continue with the batch number step × grad_accum."""
        epoch, done = saved_position(states, world_size, batch_size)
        if (self.epoch_samples - done) // self.global_batch == 0:  # no whole step of this epoch is left
            epoch, done = epoch + 1, 0
        skipped = sum(state["source"].get("skipped", 0) for state in states) if self.rank == 0 else 0
        self.source.restart(epoch, skipped)
        self.epoch, self.batch_in_epoch, self.batches_seen = epoch, 0, step * self.grad_accum
        where = f"epoch {epoch} at sample {done:,} of {self.epoch_samples:,}"
        if done == 0 or self.source.takes_offset:
            self.offset = done
            return f"data: {where}, the same global sample order (every sample of the epoch once)"
        self.offset = 0
        return (f"data: {where}: the {type(self.source).__name__} backend cannot start an epoch mid-order on "
                f"another number of ranks, so epoch {epoch} restarts: the {done:,} samples its old ranks had read in "
                f"it are read a second time, the rest once; later epochs read every sample once")


def saved_position(states: list[dict], world_size: int, batch_size: int) -> tuple[int, int]:
    """(epoch, samples of it read) of the loaders whose state_dicts are `states` (one per rank, in lock-step), which
    had `world_size` ranks reading batches of `batch_size`."""
    first = states[0]
    return first["epoch"], first.get("offset", 0) + first["batch_in_epoch"] * world_size * batch_size


def open_manifest(shards: str, key: str = "data.shards", fetch_timeout_s: float | None = None) -> Manifest:
    """The manifest of the shard folder `shards` (the config's `key`), or a DataError naming the key and saying what
    to do. With `fetch_timeout_s` (data.fetch_timeout_s), `shards` may also be the folder's URL, its manifest fetched
    within that time; without it, a URL is refused (the key's readers read a folder on this machine)."""
    if not shards:
        raise DataError(f"{key} is not set: run `python shard_dataset.py IMAGE_FOLDER SHARDS` and set {key} to SHARDS")
    try:
        if fetch_timeout_s is not None and is_url(shards):
            return remote_manifest(shards, RetryPolicy(fetch_timeout_s))
        return read_manifest(shards)
    except (ManifestError, ValueError) as err:
        raise DataError(f"{key} {shards}: {err}") from err


def shard_files(data, manifest: Manifest) -> tuple[list[ShardFile], ShardCache | None]:
    """data.shards' shards, and the node's cache that holds them when data.shards is a URL (None for a folder)."""
    if not is_url(data.shards):
        return list_shards(data.shards, manifest), None
    bound = int(data.cache_gb * 1e9) if data.cache_gb else None
    cache = ShardCache.open(data.shards, manifest, Path(data.cache_dir), bound, RetryPolicy(data.fetch_timeout_s))
    return cache.shard_files(), cache


def build_loader(data, sampler: MultiBlockMaskSampler, seed: int, rank: int, layout: BatchLayout, manifest: Manifest,
                 backend: str, device: torch.device, dtype: torch.dtype) -> Loader:
    """The loader of `rank`.

    Args:
        data: the config's data section (config.schema.DataConfig): shards, crop and reader settings (its batch_size
            is not read: `layout` holds the batch this run trains with).
        sampler: the multiblock mask sampler (its seed and geometry are the caller's).
        seed: the run's seed, from which the source's shuffles and crops are hashed.
        rank: this process's place among the layout's data-parallel ranks.
        layout: the per-rank batch, grad_accum (an epoch ends on a whole step) and world size.
        manifest: data.shards' manifest (open_manifest); backend: "dali" or "torch" (resolve_backend).
        device, dtype: where the batches go, and the images' dtype there.
    """
    steps = layout.steps_per_epoch(manifest.total_samples, data.shards)
    batches = steps * layout.grad_accum
    world_size = layout.world_size
    try:
        shards, cache = shard_files(data, manifest)
        if backend == "dali":
            from pipeline.dali_source import DaliSource

            source = DaliSource(data, seed, shards, batches, rank=rank, world_size=world_size, device=device,
                                dtype=dtype, batch_size=layout.batch_size, cache=cache)
        else:
            from pipeline.torch_source import TorchSource

            source = TorchSource(data, seed, shards, batches, rank=rank, world_size=world_size, device=device,
                                 batch_size=layout.batch_size, cache=cache)
    except ManifestError as err:
        raise DataError(f"data.shards {data.shards}: {err}") from err
    logger.info("data: %s backend, %d shard(s), %d samples per rank, %d batches of %d per epoch", backend,
                len(shards), manifest.total_samples // world_size, batches, layout.batch_size)
    return Loader(source, sampler, layout, steps, rank, device, dtype)
