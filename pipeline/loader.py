"""The one loader entry: shards → training batches (images, ctx_idx, tgt_idx, labels) on the training device.

    loader = build_loader(cfg.data, sampler, seed=cfg.run.seed, rank=0, world_size=1, device=device, dtype=dtype)
    for batch in loader: ...          # endless: epochs follow each other; loader.epoch says which
    state = loader.state_dict()       # resume: a new loader + load_state_dict(state) continues with exactly the
                                      # samples, crops and masks the old one would have produced next

A source (pipeline/source.py) yields each epoch's images; masks come from the multiblock sampler as a pure function
of (seed, batch number, rank), so they need no state of their own. Every rank runs the same number of batches per
epoch (the smallest rank's share), so ranks stay in lock-step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import torch

from pipeline import DataError
from pipeline.masks import MultiBlockMaskSampler
from pipeline.shards import ManifestError, list_shards, read_manifest
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


class Loader:
    def __init__(self, source: Source, sampler: MultiBlockMaskSampler, batch_size: int, batches_per_epoch: int,
                 num_samples: int, rank: int, device: torch.device, dtype: torch.dtype):
        self.source, self.sampler, self.batch_size = source, sampler, batch_size
        self.batches_per_epoch, self.num_samples, self.rank = batches_per_epoch, num_samples, rank
        self.device, self.dtype = device, dtype
        self.epoch, self.batch_in_epoch, self.batches_seen = 0, 0, 0
        self.mean, self.std = imagenet_stats(device)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            for images, labels, keys in self.source.epoch_batches(self.epoch, self.batch_in_epoch):
                ctx_idx, tgt_idx = self.sampler.sample(self.batch_size, step=self.batches_seen, rank=self.rank)
                self.batch_in_epoch += 1
                self.batches_seen += 1
                yield Batch(self._images(images), self._to_device(ctx_idx), self._to_device(tgt_idx),
                            self._to_device(labels), keys)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

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
                "source": self.source.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.batches_seen = state["batches_seen"]
        self.source.load_state_dict(state["source"])


def build_loader(data, sampler: MultiBlockMaskSampler, seed: int, rank: int, world_size: int, device: torch.device,
                 dtype: torch.dtype) -> Loader:
    """The loader of `rank`.

    Args:
        data: the config's data section (config.schema.DataConfig): shards, backend, batch and crop settings.
        sampler: the multiblock mask sampler (its seed and geometry are the caller's).
        seed: the run's seed, from which the source's shuffles and crops are hashed.
        rank, world_size: this process's place among the data-parallel ranks.
        device, dtype: where the batches go, and the images' dtype there.
    """
    if not data.shards:
        raise DataError("data.shards is not set: run `python shard_dataset.py IMAGE_FOLDER SHARDS` and set "
                        "data.shards to SHARDS")
    try:
        manifest = read_manifest(data.shards)
        shards = list_shards(data.shards, manifest)
    except (ManifestError, ValueError) as err:
        raise DataError(f"data.shards {data.shards}: {err}") from err
    per_rank = manifest.total_samples // world_size  # ranks split the samples (not the shards) evenly
    batches = per_rank // data.batch_size
    if batches < 1:
        raise DataError(f"data.shards {data.shards}: {per_rank} samples per rank make no batch of "
                        f"{data.batch_size}: lower data.batch_size or use more data")
    backend = resolve_backend(data.backend)
    try:
        if backend == "dali":
            from pipeline.dali_source import DaliSource

            source = DaliSource(data, seed, shards, batches, rank=rank, world_size=world_size, device=device,
                                dtype=dtype)
        else:
            from pipeline.torch_source import TorchSource

            source = TorchSource(data, seed, shards, batches, rank=rank, world_size=world_size, device=device)
    except ManifestError as err:
        raise DataError(f"data.shards {data.shards}: {err}") from err
    logger.info("data: %s backend, %d shard(s), %d samples per rank, %d batches of %d per epoch", backend,
                len(shards), per_rank, batches, data.batch_size)
    return Loader(source, sampler, data.batch_size, batches, manifest.total_samples, rank, device, dtype)
