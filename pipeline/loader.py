"""The one loader entry: shards → training batches (images, ctx_idx, tgt_idx, labels) on the training device.

    loader = build_loader(cfg, rank=0, world_size=1, device=torch.device("cuda"))
    for batch in loader: ...          # endless: epochs follow each other; loader.epoch says which
    state = loader.state_dict()       # resume: a new loader + load_state_dict(state) continues with exactly the
                                      # samples, crops and masks the old one would have produced next

A backend ("source") yields, for one epoch from a given batch on, (images, labels, keys): images either uint8
(B, 3, S, S) to be normalised here, or already normalised floats. Masks come from the multiblock sampler as a pure
function of (seed, batch number, rank), so they need no state of their own. Every rank runs the same number of
batches per epoch (the smallest rank's share), so ranks stay in lock-step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Protocol

import torch

from config import training_dtype
from pipeline.masks import MultiBlockMaskSampler
from pipeline.shards import ManifestError, list_shards, read_manifest

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_stats(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, 3, 1, 1) tensors on `device`, scaled to uint8 pixel values: (x - mean) / std normalises."""
    shape = (1, 3, 1, 1)
    return (torch.tensor(IMAGENET_MEAN, device=device).view(shape) * 255,
            torch.tensor(IMAGENET_STD, device=device).view(shape) * 255)


class DataError(RuntimeError):
    """Data that cannot be read at training time; the message names the shard and the sample key."""


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) normalised, training dtype, on the device
    ctx_idx: torch.Tensor  # (B, K_enc) int64
    tgt_idx: torch.Tensor  # (M, B, K_pred) int64
    labels: torch.Tensor  # (B,) int64; -1 for unlabeled data
    keys: list[str]  # sample keys (shard-independent, unique in the dataset)


class Source(Protocol):
    """A backend. Built as Source(cfg, shards, batches_per_epoch, rank=, world_size=, device=[, dtype=]) over ALL
    shards (pipeline.shards.ShardFile list): each rank reads its 1/world_size of the samples (an even split of
    samples, not of shards, so no rank runs short), exactly batches_per_epoch batches per epoch, every sample at most
    once per epoch across ranks, in an order that depends only on (run.seed, epoch, rank)."""

    skipped: int  # corrupt samples skipped so far (data.on_bad_sample: skip)

    def epoch_batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def mask_sampler(cfg) -> MultiBlockMaskSampler:
    """The multiblock sampler for a config.Config (mask section + crop and patch size + run seed)."""
    import dataclasses

    return MultiBlockMaskSampler(input_size=cfg.data.crop_size, patch_size=cfg.model.patch_size, seed=cfg.run.seed,
                                 **dataclasses.asdict(cfg.mask))


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


def build_loader(cfg, rank: int, world_size: int, device: torch.device,
                 dtype: Optional[torch.dtype] = None) -> Loader:
    """The loader of `rank` for a config.Config; data.backend picks DALI or the PyTorch backend."""
    if not cfg.data.shards:
        raise DataError("data.shards is not set: run `python shard_dataset.py IMAGE_FOLDER SHARDS` and set "
                        "data.shards to SHARDS")
    try:
        manifest = read_manifest(cfg.data.shards)
        shards = list_shards(cfg.data.shards, manifest)
    except (ManifestError, ValueError) as err:
        raise DataError(f"data.shards {cfg.data.shards}: {err}") from err
    per_rank = manifest.total_samples // world_size  # ranks split the samples (not the shards) evenly
    batches = per_rank // cfg.data.batch_size
    if batches < 1:
        raise DataError(f"data.shards {cfg.data.shards}: {per_rank} samples per rank make no batch of "
                        f"{cfg.data.batch_size}: lower data.batch_size or use more data")
    dtype = dtype or training_dtype(cfg)
    backend = resolve_backend(cfg.data.backend)
    if backend == "dali":
        from pipeline.dali import DaliSource

        source = DaliSource(cfg, shards, batches, rank=rank, world_size=world_size, device=device, dtype=dtype)
    else:
        from pipeline.torch_loader import TorchSource

        source = TorchSource(cfg, shards, batches, rank=rank, world_size=world_size, device=device)
    logger.info("data: %s backend, %d shard(s), %d samples per rank, %d batches of %d per epoch", backend,
                len(shards), per_rank, batches, cfg.data.batch_size)
    return Loader(source, mask_sampler(cfg), cfg.data.batch_size, batches, manifest.total_samples, rank, device,
                  dtype)
