"""The epoch orders' trade-off, simulated (docs/data-pipeline.md, "The epoch order"): the bytes a node's
least-recently-used shard cache fetches per epoch under data.epoch_order global and cache_blocks, read with the
PyTorch backend's fetch-ahead, by the cache's share of the data set and the block size, and how mixed each order is.

    python -m benchmarks.epoch_order [--shards 500 --samples 200 --epochs 3]

Mixing is measured per global batch of `batch` samples: the distinct shards it draws from, as a share of what the
global order's batches draw from (1.0: as mixed as one shuffle of everything), and the share of the data set one
block spans (the most a sample's neighbours in the order can come from).
"""
from __future__ import annotations

import argparse
from collections import OrderedDict

import numpy as np

from pipeline.loading.order import EpochOrder, OrderSpec, choose, fetches_ahead


def fetched_per_epoch(order: EpochOrder, epochs: int, bound: int, batch: int = 64) -> list[int]:
    """Bytes an LRU cache of `bound` bytes fetches in each epoch, read as the PyTorch backend reads `order`: before
    each batch of `batch` samples, the shards needed next within the cache less two shards (`upcoming`) are marked
    used and the missing ones fetched (torch_backend.FetchAhead; not in the global order with a cache smaller than
    the shards, as the backend), then the batch's samples are read."""
    cache, out = LRU(bound, order.bytes), []
    budget, ahead = order.fetch_budget(bound), fetches_ahead(order.spec, bound, order.total_bytes)
    for epoch in range(epochs):
        before = cache.fetched
        shards = order.shard_of[order.permutation(epoch).numpy()]
        for start in range(0, len(shards), batch):
            needed = order.upcoming(epoch, start, budget) if ahead else []
            for s in reversed(needed):
                cache.touch(s)
            for s in needed:
                cache.get(s)
            for s in np.unique(shards[start:start + batch]).tolist():
                cache.get(s)
        out.append(cache.fetched - before)
    return out


class LRU:
    """A shard cache of `bound` bytes that evicts the least recently used shard; counts the bytes it fetched."""

    def __init__(self, bound: int, sizes: np.ndarray):
        self.bound, self.sizes, self.held, self.fetched = bound, sizes, 0, 0
        self.shards: OrderedDict[int, bool] = OrderedDict()

    def touch(self, s: int) -> None:
        if s in self.shards:
            self.shards.move_to_end(s)

    def get(self, s: int) -> None:
        if s in self.shards:
            self.shards.move_to_end(s)
            return
        while self.shards and self.held + self.sizes[s] > self.bound:
            self.held -= int(self.sizes[self.shards.popitem(last=False)[0]])
        self.shards[s] = True
        self.held += int(self.sizes[s])
        self.fetched += int(self.sizes[s])


def distinct_shards(order: EpochOrder, epoch: int, batch: int) -> float:
    """The mean number of distinct shards in a global batch of `batch` samples of `epoch`."""
    shards = order.shard_of[order.permutation(epoch).numpy()]
    whole = len(shards) // batch * batch
    return float(np.mean([len(np.unique(b)) for b in shards[:whole].reshape(-1, batch)]))


def study(shards: int, samples: int, epochs: int, batch: int, seed: int = 0) -> list[dict]:
    """One row per (cache share, order): bytes per epoch as multiples of the data set, and the mixing figures."""
    rng = np.random.default_rng(seed)
    counts = np.full(shards, samples)
    sizes = rng.integers(90, 110, shards) * samples * 1000  # about 100 KB an image, shards within ±10%
    total, largest = int(sizes.sum()), int(sizes.max())
    reference = distinct_shards(EpochOrder(OrderSpec(), counts, sizes, seed), 1, batch)
    rows = []
    for share in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        bound = int(share * total)
        default = choose("cache_blocks", total, largest, bound)
        specs = {"global": OrderSpec(), "cache_blocks": default,
                 "cache_blocks, half blocks": OrderSpec("cache_blocks", default.block_bytes // 2, default.keep_bytes)}
        for name, spec in specs.items():
            order = EpochOrder(spec, counts, sizes, seed)
            fetched = fetched_per_epoch(order, epochs, bound)
            span = 1.0 if spec.kind == "global" else max(int(sizes[b].sum()) for b in order.blocks(1)) / total
            rows.append({"cache": share, "order": name, "x_dataset": [f / total for f in fetched],
                         "mixing": distinct_shards(order, 1, batch) / reference, "block_span": span})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=500)
    p.add_argument("--samples", type=int, default=200, help="samples per shard")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=256, help="samples per global batch, for the mixing figure")
    args = p.parse_args(argv)
    print(f"{args.shards} shards of {args.samples} samples, an LRU cache, {args.epochs} epochs; bytes fetched per "
          f"epoch as multiples of the data set D")
    print("| cache | order | per epoch (x D) | total (x D) | mixing | a block spans |")
    print("|---|---|---|---|---|---|")
    for r in study(args.shards, args.samples, args.epochs, args.batch):
        per_epoch = ", ".join(f"{x:.2f}" for x in r["x_dataset"])
        print(f"| {r['cache']:.0%} | {r['order']} | {per_epoch} | {sum(r['x_dataset']):.2f} | {r['mixing']:.2f} | "
              f"{r['block_span']:.0%} of D |")


if __name__ == "__main__":
    main()
