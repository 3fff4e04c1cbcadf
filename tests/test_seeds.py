"""Seeds: one rule for every stream, 63-bit, streams kept apart."""

import pytest

from pmf.sampling import image_seed
from pmf.seeds import DATA_ORDER, IMAGE, LOSS, MODULUS, TOY, derive_seed


def test_streams_are_distinct_and_in_range():
    streams = (IMAGE, LOSS, DATA_ORDER, TOY)
    seeds = {derive_seed(seed, a, b, stream=s) for seed in range(3) for a in range(20) for b in range(4)
             for s in streams}
    assert len(seeds) == 3 * 20 * 4 * len(streams)
    assert all(0 <= s < MODULUS for s in seeds)
    assert derive_seed(2**70, 3) < MODULUS


def test_image_stream_is_the_sampling_seed():
    assert [derive_seed(5, i) for i in range(4)] == [image_seed(5, i) for i in range(4)]


def test_too_many_parts_are_refused():
    with pytest.raises(ValueError, match="at most 2"):
        derive_seed(0, 1, 2, 3)
