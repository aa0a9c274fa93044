"""What the loader asks of a source (a backend: pipeline/dali_source.py, pipeline/torch_source.py), and what both
sources share: the normalisation constants."""
from __future__ import annotations

from typing import Iterator, Protocol

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_stats(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, 3, 1, 1) tensors on `device`, scaled to uint8 pixel values: (x - mean) / std normalises."""
    shape = (1, 3, 1, 1)
    return (torch.tensor(IMAGENET_MEAN, device=device).view(shape) * 255,
            torch.tensor(IMAGENET_STD, device=device).view(shape) * 255)


class Source(Protocol):
    """A backend, built over ALL shards (pipeline.shards.ShardFile list) as Source(data, seed, shards,
    batches_per_epoch, rank=, world_size=, device=[, dtype=]) with `data` the config's data section: each rank reads
    its 1/world_size of the samples (an even split of samples, not of shards, so no rank runs short), exactly
    batches_per_epoch batches per epoch, every sample at most once per epoch across ranks, in an order that depends
    only on (seed, epoch, rank). docs/data-pipeline.md gives each source's arithmetic.

    epoch_batches yields (images, labels, keys): images uint8 (B, 3, S, S) for the loader to normalise, or already
    normalised floats."""

    skipped: int  # corrupt samples skipped so far (data.on_bad_sample: skip)

    def epoch_batches(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
