"""The global sample order of each epoch (data.epoch_order), and the shards it needs next.

    order = EpochOrder.build("auto", shard_samples, shard_bytes, seed, cache_bound)   # order.spec: global or blocks
    perm = order.permutation(epoch)          # every sample index once: rank r reads perm[offset + r::world_size]
    names = order.upcoming(epoch, position, budget)   # shard indices still needed from sample `position` on, in the
                                             # order of first need, within `budget` bytes: what to fetch ahead

`global`: one seeded shuffle of every sample. A cache smaller than the data set then needs nearly every shard all
the time: about every other sample evicts a shard the next ones need (the thrash of an LRU cache under a random
order; docs/data-pipeline.md, "The epoch order").

`cache_blocks` (mosaicml/streaming's block shuffle, with the epoch's start chained to the last one's end): an epoch's
shards are cut, in a seeded shuffle, into blocks of `block_bytes` (half the cache less two shards); the samples of a
block are shuffled among themselves. Block k is read while block k+1 is fetched, and the shards of the last blocks of
epoch e, which the cache still holds (`keep_bytes`), come first in epoch e+1, in a shuffle of their own. After the
first epoch an epoch fetches about the data set less what the cache keeps. Every epoch is still a permutation of all
samples, a function of (seed, epoch, the shards' sizes, block_bytes, keep_bytes) alone: the parameters live in the
loader's state, so a resume on any number of ranks reads the same order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from pipeline.seeds import hashed_seed

DATA_STREAM = (0xDA7A,)  # the seed domain of epoch orders and crops (pipeline/seeds.py)
SHARD_STREAM = (0xDA7A, 1)  # the shard shuffles of cache_blocks
BLOCK_STREAM = (0xDA7A, 2)  # the sample shuffles inside its blocks


@dataclass(frozen=True)
class OrderSpec:
    """What an order is, as the loader's state keeps it: `kind` global or cache_blocks, and a cache_blocks order's
    block_bytes and keep_bytes."""

    kind: str = "global"
    block_bytes: int = 0
    keep_bytes: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self, total_bytes: int) -> str:
        """The order in a log line."""
        if self.kind == "global":
            return "data: epoch order global (one shuffle of every sample)"
        return (f"data: epoch order cache_blocks: blocks of {self.block_bytes / 1e9:.3g} GB, each read while the next "
                f"is fetched; each epoch starts with the {self.keep_bytes / 1e9:.3g} GB of shards the cache kept; "
                f"about {max(0, total_bytes - self.keep_bytes) / 1e9:.3g} GB of the {total_bytes / 1e9:.3g} GB "
                f"fetched per epoch after the first")


def choose(setting: str, total_bytes: int, largest: int, bound: int | None) -> OrderSpec:
    """The order data.epoch_order asks for: `auto` is cache_blocks when the cache's `bound` (None: no bound) cannot
    hold the `total_bytes` of the shards, else global. The cache less two of the largest shards (the readers' room)
    is what the fetch-ahead fills and what the next epoch starts with (keep_bytes); a block is half of it, at least
    one shard, so that block k+1 is fetched while block k is read."""
    if setting == "global" or (setting == "auto" and (bound is None or bound >= total_bytes)):
        return OrderSpec()
    ahead = fetch_budget(bound, total_bytes, largest)
    return OrderSpec("cache_blocks", block_bytes=max(largest, ahead // 2), keep_bytes=ahead)


def fetch_budget(bound: int | None, total_bytes: int, largest: int) -> int:
    """The bytes of shards the fetch-ahead may hold in a cache of `bound` bytes: all of it less two of the largest
    shards (the readers' room), at least one shard; every shard without a bound."""
    return total_bytes if bound is None else max(largest, bound - 2 * largest)


def fetches_ahead(spec: OrderSpec, bound: int | None, total_bytes: int) -> bool:
    """Whether the readers' shards are fetched ahead of them: not in the global order with a cache smaller than the
    shards, where whatever was fetched ahead the readers' next samples would evict (benchmarks/epoch_order.py)."""
    return spec.kind != "global" or bound is None or bound >= total_bytes


class EpochOrder:
    """The order of every epoch over shards of `shard_samples` samples and `shard_bytes` bytes (the samples are
    numbered shard by shard, as the backend lists them)."""

    def __init__(self, spec: OrderSpec, shard_samples: Sequence[int], shard_bytes: Sequence[int], seed: int):
        self.spec, self.seed = spec, seed
        self.counts = np.asarray(shard_samples, dtype=np.int64)
        self.bytes = np.asarray(shard_bytes, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.shard_of = np.repeat(np.arange(len(self.counts)), self.counts)  # (N,) each sample's shard
        self._perm: tuple[int, torch.Tensor] | None = None
        self._needs: tuple[int, np.ndarray, np.ndarray] | None = None
        self._sequence: tuple[int, list[int]] = (-1, [])

    @classmethod
    def build(cls, setting: str, shard_samples: Sequence[int], shard_bytes: Sequence[int], seed: int,
              bound: int | None) -> "EpochOrder":
        spec = choose(setting, int(sum(shard_bytes)), int(max(shard_bytes, default=0)), bound)
        return cls(spec, shard_samples, shard_bytes, seed)

    @property
    def samples(self) -> int:
        return int(self.counts.sum())

    @property
    def total_bytes(self) -> int:
        return int(self.bytes.sum())

    def fetch_budget(self, bound: int | None) -> int:
        """What the fetch-ahead may hold of these shards in a cache of `bound` bytes (fetch_budget)."""
        return fetch_budget(bound, self.total_bytes, int(self.bytes.max(initial=0)))

    def permutation(self, epoch: int) -> torch.Tensor:
        """(N,) int64: every sample once, in this epoch's order."""
        if self._perm is None or self._perm[0] != epoch:
            self._perm = epoch, self._permutation(epoch)
        return self._perm[1]

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self.spec.kind == "global":
            gen = torch.Generator().manual_seed(hashed_seed((self.seed, epoch), DATA_STREAM))
            return torch.randperm(self.samples, generator=gen)
        parts = [self._block_samples(epoch, b, block) for b, block in enumerate(self.blocks(epoch))]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def _block_samples(self, epoch: int, b: int, block: list[int]) -> torch.Tensor:
        """The samples of block `b` of `epoch`, shuffled among themselves."""
        ids = np.concatenate([np.arange(self.starts[s], self.starts[s] + self.counts[s]) for s in block])
        gen = torch.Generator().manual_seed(hashed_seed((self.seed, epoch, b), BLOCK_STREAM))
        return torch.from_numpy(ids)[torch.randperm(len(ids), generator=gen)]

    def shard_sequence(self, epoch: int) -> list[int]:
        """cache_blocks: the shards of `epoch` in the order their blocks are read. Epoch 0 is a shuffle of all
        shards; epoch e+1 is a shuffle of the shards the cache holds at the end of epoch e (`_kept`), then a shuffle
        of the rest."""
        done, sequence = self._sequence
        if not 0 <= done <= epoch:
            done, sequence = 0, self._shuffled(list(range(len(self.counts))), epoch=0)
        for e in range(done + 1, epoch + 1):
            kept = self._kept(e - 1, sequence)
            rest = sorted(set(sequence) - set(kept))
            sequence = self._shuffled(sorted(kept), e, part=0) + self._shuffled(rest, e, part=1)
        self._sequence = epoch, sequence  # the next epoch goes on from here
        return sequence

    def _shuffled(self, shards: list[int], epoch: int, part: int = 0) -> list[int]:
        gen = torch.Generator().manual_seed(hashed_seed((self.seed, epoch, part), SHARD_STREAM))
        return [shards[i] for i in torch.randperm(len(shards), generator=gen).tolist()]

    def _kept(self, epoch: int, sequence: list[int]) -> list[int]:
        """What a least-recently-used cache of keep_bytes holds at the end of `epoch` (whose shards are `sequence`):
        the shards read last, latest first, while they fit. Only the epoch's last blocks are shuffled to find them."""
        kept, total = [], 0
        blocks = self._cut(sequence)
        for b in range(len(blocks) - 1, -1, -1):
            backwards = self.shard_of[self._block_samples(epoch, b, blocks[b]).numpy()[::-1]]
            shards, from_end = np.unique(backwards, return_index=True)
            for s in shards[np.argsort(from_end)].tolist():  # the last read first
                total += int(self.bytes[s])
                if total > self.spec.keep_bytes:
                    return kept
                kept.append(s)
        return kept

    def _cut(self, sequence: list[int]) -> list[list[int]]:
        """`sequence` cut in order into blocks of at most block_bytes (a larger shard is a block of its own)."""
        blocks, current, total = [], [], 0
        for s in sequence:
            if current and total + self.bytes[s] > self.spec.block_bytes:
                blocks.append(current)
                current, total = [], 0
            current.append(s)
            total += int(self.bytes[s])
        return blocks + [current] if current else blocks

    def blocks(self, epoch: int) -> list[list[int]]:
        """The blocks of `epoch` (global: one block of every shard)."""
        if self.spec.kind == "global":
            return [list(range(len(self.counts)))]
        return self._cut(self.shard_sequence(epoch))

    def upcoming(self, epoch: int, position: int, budget: int) -> list[int]:
        """The shards still needed from sample `position` of `epoch`'s order on, in the order each is first needed,
        as many as fit `budget` bytes (at least the first)."""
        first, last = self._first_and_last_need(epoch)
        needed = np.flatnonzero(last >= position)
        needed = needed[np.argsort(first[needed], kind="stable")]
        fits = np.cumsum(self.bytes[needed]) <= budget
        fits[:1] = True
        return needed[fits].tolist()

    def _first_and_last_need(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(S,) each shard's first and last position in `epoch`'s order."""
        if self._needs is None or self._needs[0] != epoch:
            shards = self.shard_of[self.permutation(epoch).numpy()]
            n, positions = len(self.counts), np.arange(len(shards))
            first, last = np.full(n, len(shards)), np.full(n, -1)
            np.minimum.at(first, shards, positions)
            np.maximum.at(last, shards, positions)
            self._needs = epoch, first, last
        return self._needs[1], self._needs[2]
