"""A MariaDB tablespace whose page 0 the server had not written when the backup began (right after a bulk load).

Seen in tests/test_redo_interleave.py (about 3 runs in 8): MariaDB 10.11 writes page 0 of a new ``.ibd`` lazily, so
after ``INSERT ... SELECT`` into a new table the whole file can still be zero. The copier warned and went on with
the SpaceInfo an all-zero page 0 gives (flags 0: crc32/innodb), and when the page cleaner then wrote the real
full_crc32 pages, it checked them as crc32/innodb pages: the "trailer LSN" it compared was the full_crc32 CRC-32C,
so a valid page 0 failed the backup through every re-read ("LSN in header and trailer differ (header low word
0x0114515e, trailer 0x38c6ca3c)"). The pages are real (fixtures/pages/mariadb10-bulkload-head-16k.pages.gz, pages
0-3 of that file, captured when the backup failed); the server's writes are real writes into the file at the moment
the copier has scanned the all-zero file (a read hook on the copier's throttle).
"""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from innostream.backup import backup_target
from innostream.copier import FileCopier, SourceFile
from innostream.extract import PageValidator
from innostream.formats.buf0checksum import stamp_page, validate_pages
from innostream.formats.errors import Corrupt
from innostream.formats.fsp0fsp import space_info
from innostream.throttle import Throttle

PS = 16384
PAGES = gzip.decompress(
    (Path(__file__).resolve().parents[1] / "fixtures/pages/mariadb10-bulkload-head-16k.pages.gz").read_bytes())
FILE_PAGES = 8  # the fixture's 4 pages, then 4 pages the server has not written


class ServerWrites(Throttle):
    """The copier pays every read here; once it has read to the end of the file (a read of 0 bytes: the scan that
    found every page zero), write ``pages`` into the file as the server's page cleaner would."""

    def __init__(self, path: Path, pages: dict[int, bytes], page_size: int = PS) -> None:
        super().__init__(1 << 40)
        self.path, self.pages, self.done, self.page_size = path, pages, False, page_size

    def take(self, n: int) -> None:
        if n == 0 and not self.done:
            self.done = True
            with open(self.path, "r+b") as f:
                for no, page in self.pages.items():
                    f.seek(no * self.page_size)
                    f.write(page)
        super().take(n)


def _page(no: int) -> bytes:
    return PAGES[no * PS : (no + 1) * PS]


def _copy(tmp_path: Path, written: dict[int, bytes]) -> tuple[FileCopier, Path]:
    src = tmp_path / "f.ibd"
    src.write_bytes(bytes(FILE_PAGES * PS))  # created and extended, nothing written yet
    copier = FileCopier(backup_target(tmp_path / "out"), "mariadb", cancel=threading.Event(), chunk_size=1 << 16,
                        retries=2, retry_sleep=0.01)
    copier.throttle = ServerWrites(src, written)
    copier.copy(SourceFile(src, "filler/f.ibd", "innodb"))
    assert copier.throttle.done, "the copier never read to the end of the all-zero file"
    return copier, tmp_path / "out/filler/f.ibd"


def test_captured_page0_is_valid_full_crc32_and_the_reported_trailer_was_its_checksum(tmp_path: Path) -> None:
    info = space_info(_page(0), "mariadb")
    assert (info.full_crc32, info.flags, info.space_id) == (True, 0x15, 13)
    assert validate_pages(PAGES, info, 0) == []
    # what the backup said: the bytes at size-4 (full_crc32: the CRC-32C) read as the crc32/innodb trailer LSN
    zero_page_info = space_info(bytes(PS), "mariadb")
    assert not zero_page_info.full_crc32
    assert validate_pages(_page(0), zero_page_info, 0) == [
        (0, "LSN in header and trailer differ (header low word 0x0114515e, trailer 0x38c6ca3c)")]
    assert struct.unpack_from(">I", _page(0), PS - 4)[0] == 0x38C6CA3C
    # the server's own checker accepts the captured pages
    ibd = tmp_path / "f.ibd"
    ibd.write_bytes(PAGES)
    innochecksum = shutil.which("innochecksum")
    assert innochecksum, "innochecksum (mariadb-server 10.11) is missing"
    res = subprocess.run([innochecksum, str(ibd)], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_pages_written_after_the_zero_scan_are_checked_in_page0s_format(tmp_path: Path) -> None:
    copier, out = _copy(tmp_path, {no: _page(no) for no in range(4)})
    assert copier.retried_pages == 0
    assert out.read_bytes()[: 4 * PS] == PAGES


def test_pages_written_while_page0_is_still_zero_pass_if_valid_in_either_format(tmp_path: Path) -> None:
    copier, out = _copy(tmp_path, {no: _page(no) for no in range(1, 4)})
    assert copier.retried_pages == 0
    data = out.read_bytes()
    assert data[:PS] == bytes(PS)
    assert data[PS : 4 * PS] == PAGES[PS:]


@pytest.mark.parametrize("page0", [False, True], ids=["page0-zero", "page0-written"])
def test_a_damaged_page_still_fails_with_the_formats_it_was_checked_in(tmp_path: Path, page0: bool) -> None:
    bad = bytearray(_page(3))
    bad[200] ^= 0xFF
    written = {1: _page(1), 2: _page(2), 3: bytes(bad)} | ({0: _page(0)} if page0 else {})
    with pytest.raises(Corrupt) as err:
        _copy(tmp_path, written)
    e = err.value
    assert (e.file, e.page, e.lsn) == (str(tmp_path / "f.ibd"), 3, struct.unpack_from(">Q", bad, 16)[0])
    msg = str(e)
    assert "full_crc32 checksum mismatch" in msg
    if page0:
        assert "(checked as full_crc32, flags 0x15, from page 0)" in msg
    else:
        assert "page 0 is all zero, so the format is unknown; as a crc32/innodb page: " in msg


@pytest.mark.parametrize("damaged", [False, True], ids=["valid", "damaged"])
def test_verify_of_a_copy_whose_page0_was_still_zero(damaged: bool) -> None:
    """What the copier keeps when page 0 was written only after it had copied it (seen in the loop with forced
    flushing; `verify --restore` of that archive prepared, started and CHECK TABLE'd it clean): `verify` checks the
    other pages in either format and only warns about page 0, on MariaDB."""
    data = bytearray(bytes(PS) + PAGES[PS:] + bytes(4 * PS))
    if damaged:
        data[3 * PS + 200] ^= 0xFF
    v = PageValidator("filler/f.ibd", "mariadb")
    for off in range(0, len(data), 5000):  # frames that start mid-page
        v.feed(off, bytes(data[off : off + 5000]))
    v.finish(len(data))
    assert v.note is not None
    assert "page 0 is all zero but later pages hold data" in v.note
    if damaged:
        assert [no for no, _ in v.bad] == [3]
        assert "as a full_crc32 page: full_crc32 checksum mismatch" in v.bad[0][1]
    else:
        assert v.bad == []


def _fixture(name: str) -> tuple[bytes, int]:
    """A real sample's pages and their physical size (fixtures/README.md)."""
    data = gzip.decompress((Path(__file__).resolve().parents[1] / "fixtures/pages" / name).read_bytes())
    return data, space_info(data, "mariadb").physical_page_size


@pytest.mark.parametrize(("name", "server_page_size"), [
    ("mariadb10-full_crc32-4k.pages.gz", 4096),  # a 4K server: not cut into 16K pages
    ("mariadb10-compressed-kbs8.pages.gz", 16384),  # ROW_FORMAT=COMPRESSED: 8K pages inside each 16K
    ("mariadb10-compressed-kbs4-4k.pages.gz", 4096),
])
def test_pages_of_other_sizes_written_while_page0_is_still_zero(tmp_path: Path, name: str,
                                                                server_page_size: int) -> None:
    """An unwritten page 0 says nothing about the page size: the server's innodb_page_size cuts the file, and a
    compressed table's pages are accepted as compressed pages of any size."""
    data, zs = _fixture(name)
    info = space_info(data, "mariadb")
    n = len(data) // zs
    # Page 1, and copies of it renumbered to start at 32K: the start of a 16K page too, where a 16K guess would
    # have to take a smaller page for a whole one.
    m = 32768 // zs
    written = {no: data[no * zs : (no + 1) * zs] for no in range(1, n)}
    for no in (m, m + 1):
        page = bytearray(data[zs : 2 * zs])
        struct.pack_into(">I", page, 4, no)
        stamp_page(page, info)
        assert validate_pages(page, info, no) == []
        written[no] = bytes(page)
    size = 65536
    src = tmp_path / "f.ibd"
    src.write_bytes(bytes(size))
    copier = FileCopier(backup_target(tmp_path / "out"), "mariadb", cancel=threading.Event(), chunk_size=1 << 16,
                        retries=2, retry_sleep=0.01, page_size=server_page_size)
    copier.throttle = ServerWrites(src, written, zs)
    copier.copy(SourceFile(src, "filler/f.ibd", "innodb"))
    assert copier.throttle.done
    out = (tmp_path / "out/filler/f.ibd").read_bytes()
    assert out[zs : n * zs] == data[zs:]
    assert out[m * zs : (m + 2) * zs] == written[m] + written[m + 1]
    # A damaged one of those pages still fails.
    bad = bytearray(data[(n - 1) * zs : n * zs])
    bad[300] ^= 0x10
    src.write_bytes(bytes(size))
    copier = FileCopier(backup_target(tmp_path / "out2"), "mariadb", cancel=threading.Event(), chunk_size=1 << 16,
                        retries=2, retry_sleep=0.01, page_size=server_page_size)
    copier.throttle = ServerWrites(src, {n - 1: bytes(bad)}, zs)
    with pytest.raises(Corrupt, match="nor as compressed pages"):
        copier.copy(SourceFile(src, "filler/f.ibd", "innodb"))


@pytest.mark.parametrize("written", ["after", "before"])
def test_data_already_there_with_page0_zero(tmp_path: Path, written: str) -> None:
    """Page 0 zero while data pages are on disk when the copy opens the file: pages written after the backup's
    start checkpoint belong to a tablespace created since (the redo copy rebuilds it), so the copy goes on; pages
    older than it mean page 0 was lost: the backup fails, as before."""
    src = tmp_path / "f.ibd"
    src.write_bytes(bytes(PS) + PAGES[PS:] + bytes(4 * PS))
    lsn = min(struct.unpack_from(">Q", PAGES, no * PS + 16)[0] for no in range(1, 4))
    copier = FileCopier(backup_target(tmp_path / "out"), "mariadb", cancel=threading.Event(), chunk_size=1 << 16,
                        retries=2, retry_sleep=0.01)
    copier.start_lsn = lsn - 1 if written == "after" else lsn + 1
    if written == "after":
        copier.copy(SourceFile(src, "filler/f.ibd", "innodb"))
        assert (tmp_path / "out/filler/f.ibd").read_bytes()[PS : 4 * PS] == PAGES[PS:]
    else:
        with pytest.raises(Corrupt, match="page 0 is all zero but page 1 holds data"):
            copier.copy(SourceFile(src, "filler/f.ibd", "innodb"))


@pytest.mark.parametrize("told", [True, False], ids=["page-size-in-archive", "old-archive"])
def test_verify_cuts_a_zero_page0_tablespace_into_the_servers_pages(told: bool) -> None:
    """verify, like the copier, cuts a tablespace whose page 0 is unwritten into the server's pages when the archive
    says its ``page_size``; an older archive does not, and its 4K pages read as 16K ones fail (the gap this closes)."""
    data, zs = _fixture("mariadb10-full_crc32-4k.pages.gz")
    assert zs == 4096
    info = space_info(data, "mariadb")
    copy = bytearray(bytes(zs))
    for no in range(1, 12):  # page 1 renumbered as pages 1-11: a 16K cut would see 4K page headers mid-page
        page = bytearray(data[zs : 2 * zs])
        struct.pack_into(">I", page, 4, no)
        stamp_page(page, info)
        copy += page
    copy += bytes(4 * zs)
    v = PageValidator("filler/f.ibd", "mariadb", server_page_size=4096 if told else None)
    for off in range(0, len(copy), 3000):
        v.feed(off, bytes(copy[off : off + 3000]))
    v.finish(len(copy))
    if not told:
        assert v.bad, "16K pages made of 4K ones should not validate"
        return
    assert v.page_size == 4096
    assert v.bad == []
    assert v.pages == 16
    assert v.note is not None
    assert "page 0 is all zero but later pages hold data" in v.note
    # a flipped byte in a data page is still found, at its 4K page number
    copy[6 * zs + 300] ^= 0x10
    v = PageValidator("filler/f.ibd", "mariadb", server_page_size=4096)
    v.feed(0, bytes(copy))
    v.finish(len(copy))
    assert [no for no, _ in v.bad] == [6]
