"""Which parts of a buffer hold data: aligned all-zero blocks are left out, by the archive writer (not stored) and by
the directory writer (left as holes). Neutral ground, so neither writer imports the other."""

from __future__ import annotations

from collections.abc import Iterator

from innostream.formats import archive as fa

ZERO_BLOCK = bytes(fa.HOLE_UNIT)


def nonzero_extents(data: bytes | bytearray, offset: int) -> Iterator[tuple[int, int]]:
    """Yield (start, end) positions in ``data`` whose bytes must be stored.

    ``data`` holds file bytes starting at absolute ``offset``; extents never cross a multiple of CHUNK_SIZE, and
    HOLE_UNIT-aligned blocks that are all zero are left out. ``startswith`` at an offset is a memcmp without the
    copy a slice would make (2.5x faster than comparing slices; a memoryview compares item by item, slower still).
    """
    n = len(data)
    pos = 0
    unit = fa.HOLE_UNIT
    zero_at = data.startswith
    while pos < n:
        chunk_end = min(n, pos + fa.CHUNK_SIZE - (offset + pos) % fa.CHUNK_SIZE)
        start = -1
        p = pos
        while p < chunk_end:
            q = min(chunk_end, p + unit - (offset + p) % unit)
            if zero_at(ZERO_BLOCK if q - p == unit else ZERO_BLOCK[: q - p], p):
                if start >= 0:
                    yield start, p
                    start = -1
            elif start < 0:
                start = p
            p = q
        if start >= 0:
            yield start, chunk_end
        pos = chunk_end
