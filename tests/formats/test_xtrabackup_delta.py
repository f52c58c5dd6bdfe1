"""formats/xtrabackup_delta.py against real mariadb-backup 10.11 files of a ROW_FORMAT=COMPRESSED table (8K pages):
the .meta says the physical size in page_size and zip_size, and an unchanged table's .delta is one 8K header."""

from __future__ import annotations

import gzip
from pathlib import Path

from innostream.formats.xtrabackup_delta import DeltaMeta, build_delta, build_meta, iter_delta, parse_meta

FIXTURES = Path(__file__).resolve().parent.parent.parent / "fixtures" / "meta"


def _fixture(name: str) -> bytes:
    return gzip.decompress((FIXTURES / f"{name}.gz").read_bytes())


def test_compressed_table_meta_and_unchanged_delta_are_byte_equal() -> None:
    raw = _fixture("mariadb-10.11-compressed.ibd.meta")
    meta = parse_meta(raw)
    assert meta == DeltaMeta(page_size=8192, zip_size=8192, space_id=7)
    assert meta.physical_page_size == 8192
    assert build_meta(meta, "mariadb") == raw
    delta = _fixture("mariadb-10.11-compressed-unchanged.ibd.delta")
    assert len(delta) == 8192
    assert list(iter_delta(delta, 8192)) == []
    assert build_delta([], 8192) == delta


def test_mysql_meta_has_space_flags() -> None:
    """PXB 8.0's layout, as innostream writes it for MySQL (flags of a 16K crc32 table, SDI flag set)."""
    text = build_meta(DeltaMeta(page_size=16384, zip_size=0, space_id=2, space_flags=0x4021), "mysql")
    assert text == b"page_size = 16384\nzip_size = 0\nspace_id = 2\nspace_flags = 16417\n"
    assert parse_meta(text) == DeltaMeta(page_size=16384, zip_size=0, space_id=2, space_flags=0x4021)
