"""What the loader asks of a backend (pipeline/loading/dali_backend.py, torch_backend.py), and what both share: the
words for a shard that changed under a running job."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator, Protocol

import torch

from pipeline import DataError

if TYPE_CHECKING:
    from pipeline.remote.cache import ShardCache

# A shard deleted, moved, truncated or replaced while the run reads it: not a bad sample (data.on_bad_sample does not
# apply), the run stops, naming it.
SHARD_CHANGED_TODO = ("restore it (rerunning the same shard_dataset.py command rebuilds the shards whose files do not "
                      "match the manifest)")


def shard_sizes(paths) -> dict[str, int]:
    """{path: size in bytes} of shard files, as the backend starts (for `shard_change`)."""
    sizes = {}
    for path in paths:
        try:
            sizes[str(path)] = os.stat(path).st_size
        except OSError as err:
            raise DataError(f"shard {path}: cannot read it ({err.strerror or err}); {SHARD_CHANGED_TODO}") from err
    return sizes


def shard_change(path: str, size: int) -> str | None:
    """How the shard file `path` changed since the backend saw it with `size` bytes, as words that follow "the shard";
    None when it did not (still there, the same size)."""
    try:
        now = os.stat(path).st_size
    except FileNotFoundError:
        return "was deleted or moved while the run read it"
    except OSError as err:
        return f"can no longer be read ({err.strerror or err})"
    if now != size:
        return f"changed while the run read it: {now:,} bytes, {size:,} at the start (truncated or replaced)"
    return None


class Backend(Protocol):
    """A backend, built over ALL shards (pipeline.shards.format.ShardFile list) as Backend(data, seed, shards,
    batches_per_epoch, rank=, world_size=, device=, batch_size=[, dtype=]) with `data` the config's data section: each
    rank reads its 1/world_size of the samples (an even split of samples, not of shards, so no rank runs short), exactly
    batches_per_epoch batches per epoch, every sample at most once per epoch across ranks, in an order that depends only
    on (seed, epoch, rank). docs/data-pipeline.md gives each backend's arithmetic.

    epoch_batches(epoch, start, offset, batches) yields (images, labels, keys) from batch `start` on: images uint8
    (B, 3, S, S) for the loader to normalise, or already normalised floats. A backend that `takes_offset` starts an
    epoch at sample `offset` of its global order with `batches` batches (a run continued on another number of
    ranks); the others only take offset 0 and a whole epoch. restart(epoch, skipped, order) makes a fresh backend
    continue at `epoch` (Loader.continue_from) in the epoch order the old one saved (its state's "order")."""

    name: str  # "DALI", "PyTorch": in the log
    skipped: int  # corrupt samples skipped so far (data.on_bad_sample: skip)
    takes_offset: bool
    cache: "ShardCache | None"  # data.shards a URL: the node's shard cache; its .stats count this rank's use of it

    def epoch_batches(self, epoch: int, start: int, offset: int = 0,
                      batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def restart(self, epoch: int, skipped: int, order: dict | None = None) -> None: ...
