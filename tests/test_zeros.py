"""Which bytes the writers store: ``nonzero_extents`` against its definition, block by block."""

from __future__ import annotations

import random

import pytest
from innostream.formats import archive as fa
from innostream.zeros import PROBES, nonzero_extents

UNIT = fa.HOLE_UNIT


def by_definition(data: bytes | bytearray, offset: int) -> list[tuple[int, int]]:
    """Cut at every HOLE_UNIT and CHUNK_SIZE boundary of the file; drop all-zero pieces; join neighbours that are
    kept unless a CHUNK_SIZE boundary is between them."""
    out: list[tuple[int, int]] = []
    p = 0
    while p < len(data):
        q = min(len(data), p + UNIT - (offset + p) % UNIT)
        if any(data[p:q]):
            if out and out[-1][1] == p and (offset + p) % fa.CHUNK_SIZE:
                out[-1] = (out[-1][0], q)
            else:
                out.append((p, q))
        p = q
    return out


def _random_case(rnd: random.Random) -> tuple[bytearray, int]:
    n = rnd.choice([0, 1, 100, UNIT - 1, UNIT, UNIT + 1, 5 * UNIT + 7, fa.CHUNK_SIZE, fa.CHUNK_SIZE + 5000,
                    2 * fa.CHUNK_SIZE + UNIT])
    data = bytearray(n)
    for _ in range(rnd.randint(0, 12)):
        a = rnd.randrange(max(1, n))
        for i in range(a, min(n, a + rnd.choice([1, 10, UNIT, 9000, 100_000])), rnd.choice([1, 7, 997, UNIT])):
            data[i] = rnd.randrange(1, 256)
    offset = rnd.choice([0, 1, UNIT - 1, UNIT, fa.CHUNK_SIZE - 10, 12345, rnd.randrange(1 << 34)])
    return data, offset


@pytest.mark.parametrize("seed", range(6))
def test_extents_match_the_definition(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(60):
        data, offset = _random_case(rnd)
        want = by_definition(data, offset)
        assert list(nonzero_extents(data, offset)) == want, (len(data), offset)
        assert list(nonzero_extents(bytes(data), offset)) == want


@pytest.mark.parametrize("at", [1, 999, 1001, 2047, 2049, UNIT - 2])
def test_a_block_zero_at_every_probe_is_still_kept_for_one_byte_elsewhere(at: int) -> None:
    """The probes only pick the blocks to compare whole: a block with one byte set between them is data."""
    assert at not in PROBES
    data = bytearray(4 * UNIT)
    data[2 * UNIT + at] = 0x5A
    assert list(nonzero_extents(data, 0)) == [(2 * UNIT, 3 * UNIT)]
    # and the same with a partial block at each end (data not aligned to the file)
    assert list(nonzero_extents(data, 100)) == by_definition(data, 100)


def test_all_zero_and_all_data() -> None:
    assert list(nonzero_extents(bytes(3 * fa.CHUNK_SIZE), 0)) == []
    full = b"\x01" * (fa.CHUNK_SIZE + 3 * UNIT)
    assert list(nonzero_extents(full, UNIT)) == [(0, fa.CHUNK_SIZE - UNIT), (fa.CHUNK_SIZE - UNIT, len(full))]
