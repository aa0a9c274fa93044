"""pipeline/loading/order.py: every epoch a permutation of every sample, a function of the seed and the order's
parameters alone; cache_blocks fetches about the part of the data set the cache cannot hold (an LRU cache simulated
reading it: benchmarks/epoch_order.py), where the global order fetches a shard for about every other sample; what
is fetched ahead. (A resume on another number of ranks in the cache_blocks order: test_loader.py; the bytes a real
run fetches from nginx: e2e/test_cache_order.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.epoch_order import distinct_shards, fetched_per_epoch
from pipeline.loading.order import EpochOrder, OrderSpec, choose

SHARDS, SAMPLES = 40, 25
COUNTS = [SAMPLES] * SHARDS
SIZES = [1000 + 10 * (i % 7) for i in range(SHARDS)]  # unequal, like real shards
TOTAL, LARGEST = sum(SIZES), max(SIZES)


def blocks_order(bound: int, seed: int = 0) -> EpochOrder:
    return EpochOrder.build("cache_blocks", COUNTS, SIZES, seed, bound)


def test_auto_is_cache_blocks_only_when_the_cache_cannot_hold_the_shards():
    assert choose("auto", TOTAL, LARGEST, None).kind == "global"  # no bound
    assert choose("auto", TOTAL, LARGEST, TOTAL).kind == "global"
    assert choose("auto", TOTAL, LARGEST, TOTAL - 1).kind == "cache_blocks"
    assert choose("global", TOTAL, LARGEST, TOTAL // 2).kind == "global"  # refused
    spec = choose("cache_blocks", TOTAL, LARGEST, TOTAL // 2)  # forced
    assert spec == OrderSpec("cache_blocks", (TOTAL // 2 - 2 * LARGEST) // 2, TOTAL // 2 - 2 * LARGEST)


@pytest.mark.parametrize("setting", ["global", "cache_blocks"])
def test_every_epoch_is_a_permutation_of_every_sample_and_a_function_of_the_seed(setting):
    order = EpochOrder.build(setting, COUNTS, SIZES, seed=3, bound=TOTAL // 2)
    again, other = (EpochOrder.build(setting, COUNTS, SIZES, seed=s, bound=TOTAL // 2) for s in (3, 4))
    epochs = [order.permutation(e) for e in range(4)]
    for e, perm in enumerate(epochs):
        assert sorted(perm.tolist()) == list(range(SHARDS * SAMPLES))
    assert len({tuple(p.tolist()) for p in epochs}) == 4  # each epoch shuffled anew
    # the same order asked in another sequence (a resume at epoch 3 computes it afresh)
    assert [again.permutation(e).tolist() for e in (3, 1, 0, 2)] == [epochs[e].tolist() for e in (3, 1, 0, 2)]
    assert other.permutation(0).tolist() != epochs[0].tolist()


def test_cache_blocks_reads_block_by_block_and_starts_each_epoch_with_what_the_cache_holds():
    order = blocks_order(TOTAL // 2)
    for epoch in range(3):
        blocks = order.blocks(epoch)
        assert sorted(s for b in blocks for s in b) == list(range(SHARDS))
        assert all(sum(SIZES[s] for s in b) <= order.spec.block_bytes for b in blocks)
        shards = order.shard_of[order.permutation(epoch).numpy()]
        ends = np.cumsum([len(b) * SAMPLES for b in blocks])
        assert [set(shards[e - len(b) * SAMPLES:e].tolist()) for b, e in zip(blocks, ends)] == [set(b) for b in blocks]
    # what an LRU cache of keep_bytes holds after epoch 0: the shards read last; epoch 1 reads them first
    shards = order.shard_of[order.permutation(0).numpy()].tolist()
    held, total = [], 0
    for s in sorted(set(shards), key=lambda s: max(i for i, x in enumerate(shards) if x == s), reverse=True):
        if total + SIZES[s] > order.spec.keep_bytes:
            break
        held.append(s)
        total += SIZES[s]
    first = order.shard_sequence(1)[:len(held)]
    assert sorted(first) == sorted(held) and len(held) >= (TOTAL // 2) // LARGEST - 3


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_a_cache_smaller_than_the_data_set_fetches_about_what_it_cannot_hold(share):
    bound = int(share * TOTAL)
    blocks = fetched_per_epoch(blocks_order(bound), 3, bound)
    plain = fetched_per_epoch(EpochOrder.build("global", COUNTS, SIZES, 0, bound), 3, bound)
    print(f"cache {share:.0%}: cache_blocks {[round(b / TOTAL, 2) for b in blocks]} x D, global "
          f"{[round(p / TOTAL, 2) for p in plain]} x D")
    assert blocks[0] == TOTAL  # the first epoch fetches every shard once
    # then what the cache cannot hold, and the readers' room (two shards), the rounding to whole shards and a shard
    # the fetch-ahead's marks keep in place of another of the same last batch
    assert all(b <= (1 - share) * TOTAL + 4 * LARGEST for b in blocks[1:])
    assert all(p > 3 * TOTAL for p in plain)  # the thrash cache_blocks exists for
    assert fetched_per_epoch(blocks_order(TOTAL), 3, TOTAL) == [TOTAL, 0, 0]  # a cache of everything


def test_cache_blocks_mixes_less_than_the_global_order_and_more_with_a_larger_cache():
    mixed = distinct_shards(EpochOrder.build("global", COUNTS, SIZES, 0, None), 1, batch=64)
    small, large = (distinct_shards(blocks_order(int(s * TOTAL)), 1, batch=64) for s in (0.25, 0.75))
    assert small < large < mixed


def test_upcoming_lists_the_shards_still_needed_in_the_order_first_needed_within_the_budget():
    order = blocks_order(TOTAL // 2)
    blocks = order.blocks(0)
    first = order.upcoming(0, 0, budget=order.spec.block_bytes)
    assert sorted(first) == sorted(blocks[0])  # the first block, all of it needed from the start
    assert set(order.upcoming(0, 0, budget=TOTAL)) == set(range(SHARDS))
    after_first = len(blocks[0]) * SAMPLES  # block 0 read: its shards are no longer needed
    assert sorted(order.upcoming(0, after_first, budget=order.spec.block_bytes)) == sorted(blocks[1])
    assert order.upcoming(0, SHARDS * SAMPLES, budget=TOTAL) == []  # the epoch read
    assert len(order.upcoming(0, 0, budget=0)) == 1  # at least the next shard
