"""Which parts of a buffer hold data: aligned all-zero blocks are left out, by the archive writer (not stored) and by
the directory writer (left as holes). Neutral ground, so neither writer imports the other."""

from __future__ import annotations

from collections.abc import Iterator

from innostream.formats import archive as fa

ZERO_BLOCK = bytes(fa.HOLE_UNIT)


#: Offsets in a block whose bytes must all be zero for the block to be: probed in every block of a chunk at once
#: (strided slices ORed as integers), so that only blocks that pass are compared whole. On a sysbench datadir a first
#: byte alone let a third of the blocks through, these five only the blocks that really are zero.
PROBES = (0, 1000, 2048, 3000, fa.HOLE_UNIT - 1)


def _zero_blocks(data: bytes | bytearray, pos: int, end: int, offset: int) -> Iterator[tuple[int, int]]:
    """The all-zero blocks of ``data[pos:end]`` (each aligned, or the partial one at either end), in order."""
    unit = fa.HOLE_UNIT
    zero_at = data.startswith
    first = pos + (-(offset + pos)) % unit  # the first aligned offset at or after pos
    if first > end:  # all inside one block
        first = end
    if first > pos and zero_at(ZERO_BLOCK[: first - pos], pos):
        yield pos, first
    m = (end - first) // unit
    if m:
        mask = 0
        for o in PROBES:
            mask |= int.from_bytes(data[first + o : first + m * unit : unit], "little")
        heads = mask.to_bytes(m, "little")
        k = heads.find(0)
        while k >= 0:
            p = first + k * unit
            if zero_at(ZERO_BLOCK, p):
                yield p, p + unit
            k = heads.find(0, k + 1)
    last = first + m * unit
    if last < end and zero_at(ZERO_BLOCK[: end - last], last):
        yield last, end


def nonzero_extents(data: bytes | bytearray, offset: int) -> Iterator[tuple[int, int]]:
    """Yield (start, end) positions in ``data`` whose bytes must be stored.

    ``data`` holds file bytes starting at absolute ``offset``; extents never cross a multiple of CHUNK_SIZE, and
    HOLE_UNIT-aligned blocks that are all zero are left out (so is a partial block at either end of ``data``). The
    Python loop runs once per block that may be zero (:data:`PROBES`), not once per block: 4x faster on a sysbench
    datadir (0.2 -> 0.045 CPU s per GiB). A candidate is compared with ``startswith`` at its offset: a memcmp, no copy.
    """
    n = len(data)
    pos = 0
    while pos < n:
        chunk_end = min(n, pos + fa.CHUNK_SIZE - (offset + pos) % fa.CHUNK_SIZE)
        start = pos
        for a, b in _zero_blocks(data, pos, chunk_end, offset):
            if start < a:
                yield start, a
            start = b
        if start < chunk_end:
            yield start, chunk_end
        pos = chunk_end
