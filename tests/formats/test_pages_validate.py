"""validate_pages (the backup's fast path) against page_is_corrupted (the explained slow path), with hypothesis.

Runs of consecutive pages are built from a real B-tree page of each format (renumbered and re-stamped the way the
server stamps pages before writing them), then single bytes are flipped: the two paths must agree, and a flip must
be caught exactly where the format's checksum covers the byte.
"""

from __future__ import annotations

import time
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from innostream.formats.buf0checksum import BE32, page_is_corrupted, stamp_page, validate_pages
from innostream.formats.fsp0fsp import SpaceInfo, space_info

from tests.formats.test_pages import flavor_of, load

# sample -> (checksum algorithm to stamp with, bytes a flip there goes unnoticed by design)
FORMATS = {
    "mariadb10-full_crc32-16k": ("full_crc32", set()),
    "mariadb11-full_crc32-16k": ("full_crc32", set()),
    "mariadb10-full_crc32-4k": ("full_crc32", set()),
    "mariadb10-crc32-16k": ("crc32", set(range(26, 38))),  # flush LSN + space id: outside the crc32 ranges
    "mysql9-crc32-16k": ("crc32", set(range(26, 38))),
    "mysql9-crc32-8k": ("crc32", set(range(26, 38))),
    "mysql9-innodb-16k": ("innodb", set(range(26, 38))),
    "mariadb10-compressed-kbs8": ("crc32", set(range(16, 24)) | set(range(26, 34))),  # zip: LSN, flush LSN
    "mysql9-compressed-kbs8": ("crc32", set(range(16, 24)) | set(range(26, 34))),
    # KEY_BLOCK_SIZE = innodb_page_size: zip pages as large as the logical ones
    "mysql9-compressed-kbs8-8k": ("crc32", set(range(16, 24)) | set(range(26, 34))),
    "mariadb10-compressed-kbs8-8k": ("crc32", set(range(16, 24)) | set(range(26, 34))),
    "mariadb10-compressed-kbs4-4k": ("crc32", set(range(16, 24)) | set(range(26, 34))),
}
N_PAGES = 8


def build_run(name: str) -> tuple[SpaceInfo, bytes, int]:
    """N_PAGES consecutive valid pages, numbered from the real page's number, each a re-stamped copy of it."""
    entry, page0, page = load(name)
    info = space_info(page0, flavor_of(entry))
    algo = FORMATS[name][0]
    first = entry["pages"][1]
    out = bytearray()
    for i in range(N_PAGES):
        p = bytearray(page)
        BE32.pack_into(p, 4, first + i)
        stamp_page(p, info, None if algo == "full_crc32" else algo)
        out += p
    return info, bytes(out), first


RUNS = {name: build_run(name) for name in FORMATS}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_built_runs_are_valid(name: str) -> None:
    info, buf, first = RUNS[name]
    assert validate_pages(buf, info, first) == []
    ps = info.physical_page_size
    for i in range(N_PAGES):
        assert page_is_corrupted(buf[i * ps : (i + 1) * ps], info, first + i) is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FORMATS)), which=st.integers(0, N_PAGES - 1), where=st.data(),
       xor=st.integers(1, 255))  # fmt: skip
def test_single_flip_fast_and_slow_paths_agree(name: str, which: int, where: st.DataObject, xor: int) -> None:
    info, buf, first = RUNS[name]
    ps = info.physical_page_size
    offset = where.draw(st.integers(0, ps - 1))
    bad = bytearray(buf)
    bad[which * ps + offset] ^= xor
    found = validate_pages(bytes(bad), info, first)
    slow = [(first + i, r) for i in range(N_PAGES) if (r := page_is_corrupted(bad[i * ps : (i + 1) * ps], info,
                                                                                 first + i)) is not None]  # fmt: skip
    assert found == slow
    expect_caught = offset not in FORMATS[name][1]
    assert [no for no, _ in found] == ([first + which] if expect_caught else [])


@given(name=st.sampled_from(sorted(FORMATS)), cuts=st.lists(st.integers(1, N_PAGES - 1), max_size=4),
       which=st.integers(0, N_PAGES - 1))  # fmt: skip
def test_chunking_does_not_change_the_result(name: str, cuts: list[int], which: int) -> None:
    """The backup calls validate_pages per read buffer: any split into whole pages gives the same answer."""
    info, buf, first = RUNS[name]
    ps = info.physical_page_size
    bad = bytearray(buf)
    bad[which * ps + ps // 2] ^= 0xFF
    whole = validate_pages(bytes(bad), info, first)
    bounds = [0, *sorted(set(cuts)), N_PAGES]
    parts = []
    for a, b in pairwise(bounds):
        parts += validate_pages(memoryview(bad)[a * ps : b * ps], info, first + a)
    assert parts == whole == [(first + which, whole[0][1])]


def test_throughput_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Measure MB/s of the hot path over 32 MiB of valid 16K pages per format (printed; a floor guards regressions)."""
    for name in ("mariadb10-full_crc32-16k", "mysql9-crc32-16k"):
        info, buf, first = RUNS[name]
        reps = (32 << 20) // len(buf)
        big = bytearray()
        for r in range(reps):  # renumber so the page-number check passes
            chunk = bytearray(buf)
            for i in range(N_PAGES):
                p = memoryview(chunk)[i * 16384 : (i + 1) * 16384]
                BE32.pack_into(p, 4, first + r * N_PAGES + i)
                stamp_page(p, info)  # type: ignore[arg-type]
            big += chunk
        view = memoryview(bytes(big))
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            for off in range(0, len(view), 4 << 20):
                assert validate_pages(view[off : off + (4 << 20)], info, first + off // 16384) == []
            best = max(best, len(view) / (time.perf_counter() - t) / 1e6)
        with capsys.disabled():
            print(f"\nvalidate_pages {name}: {best:.0f} MB/s")
        assert best > 300  # ~2-6 GB/s on the dev VM; far below means the fast path was lost


@settings(max_examples=300, deadline=None)
@given(flags=st.integers(0, 2**32 - 1), flavor=st.sampled_from(["mysql", "mariadb"]), noise=st.binary(min_size=16,
       max_size=16))  # fmt: skip
def test_arbitrary_page0_gives_info_or_format_error(flags: int, flavor: str, noise: bytes) -> None:
    """Whatever page 0 holds, space_info either describes it or raises a FormatError, never anything else, and the
    description can drive validate_pages over arbitrary bytes."""
    from innostream.formats.errors import FormatError

    _, page0, _ = load("mysql9-crc32-16k")
    p = bytearray(page0)
    BE32.pack_into(p, 54, flags)
    p[100:116] = noise
    try:
        info = space_info(bytes(p), flavor)
    except FormatError:
        return
    ps = info.physical_page_size
    assert ps in (1024, 2048, 4096, 8192, 16384, 32768, 65536)
    assert info.logical_page_size >= ps
    junk = (noise * (2 * ps // 16 + 1))[: 2 * ps]
    for no, reason in validate_pages(junk, info, 3):
        assert no in (3, 4)
        assert reason
