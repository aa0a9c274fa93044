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
    batches_per_epoch, rank=, world_size=, device=, batch_size=[, dtype=]) with `data` the config's data section: each rank reads
    its 1/world_size of the samples (an even split of samples, not of shards, so no rank runs short), exactly
    batches_per_epoch batches per epoch, every sample at most once per epoch across ranks, in an order that depends
    only on (seed, epoch, rank). docs/data-pipeline.md gives each source's arithmetic.

    epoch_batches(epoch, start, offset, batches) yields (images, labels, keys) from batch `start` on: images uint8
    (B, 3, S, S) for the loader to normalise, or already normalised floats. A source that `takes_offset` starts an
    epoch at sample `offset` of its global order with `batches` batches (a run continued on another number of
    ranks); the others only take offset 0 and a whole epoch. restart(epoch, skipped) makes a fresh source continue
    at `epoch` (Loader.continue_from)."""

    skipped: int  # corrupt samples skipped so far (data.on_bad_sample: skip)
    takes_offset: bool

    def epoch_batches(self, epoch: int, start: int, offset: int = 0,
                      batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def restart(self, epoch: int, skipped: int) -> None: ...
