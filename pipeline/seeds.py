"""The one way this pipeline turns integers into generator seeds: numpy's SeedSequence hashing of (parts, stream).

Every random stream (mask sizes, mask placements, crops, DALI's operators and shuffle) has a `stream` key of its own,
so the same (seed, step, rank) never gives two streams the same numbers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def hashed_seed(parts: Sequence[int], stream: Sequence[int], bits: int = 63) -> int:
    """A non-negative seed of `bits` bits (63, or 31 for DALI) hashed from `parts` in the domain `stream`."""
    if bits not in (31, 63):
        raise ValueError(f"hashed_seed: bits must be 31 or 63, got {bits}")
    state = np.random.SeedSequence(entropy=list(parts), spawn_key=tuple(stream)).generate_state(1, np.uint64)
    word = int(state[0]) if bits == 63 else int(state[0]) & 0xFFFFFFFF  # the low word is the 32-bit state
    return word >> 1
