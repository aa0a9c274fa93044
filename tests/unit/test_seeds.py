"""pipeline.seeds: one hashing for every random stream of the pipeline; streams apart, sizes as asked."""
import numpy as np
import pytest

from pipeline.seeds import hashed_seed


def test_seeds_are_numpys_seedsequence_hash_in_each_width():
    for parts, stream in [([0, 1], (0,)), ([5, 3, 2, 7], (0xDA7A,)), ([123, 0], (0xDA11, 1))]:
        sequence = np.random.SeedSequence(entropy=parts, spawn_key=stream)
        assert hashed_seed(parts, stream) == int(sequence.generate_state(1, np.uint64)[0]) >> 1
        assert hashed_seed(parts, stream, bits=31) == int(sequence.generate_state(1, np.uint32)[0]) >> 1
        assert 0 <= hashed_seed(parts, stream, bits=31) < 2**31 and 0 <= hashed_seed(parts, stream) < 2**63


def test_streams_and_parts_give_different_seeds():
    seeds = {hashed_seed([0, step], stream) for step in range(50) for stream in [(0,), (1, 0), (1, 1), (0xDA7A,)]}
    assert len(seeds) == 200
    with pytest.raises(ValueError, match="31 or 63"):
        hashed_seed([0], (0,), bits=32)
