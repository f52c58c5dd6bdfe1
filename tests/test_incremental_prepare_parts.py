"""The parts of chain prepare that need no server: laying a .delta on a file, the page-LSN scan, the structural
checks of an incremental and the journal (recovery/chain.py). Real files built with the real delta writer."""

from __future__ import annotations

from pathlib import Path

import pytest
from innostream.errors import PrepareError
from innostream.formats.xtrabackup_delta import DeltaMeta, build_delta, build_meta
from innostream.recovery.chain import Delta, apply_delta, incremental_deltas, newest_page, read_journal

PS = 16384


def page(space_id: int, page_no: int, lsn: int, fsp_size: int = 0) -> bytes:
    """A page with FIL_PAGE_OFFSET, FIL_PAGE_LSN, FIL_PAGE_SPACE_ID and (page 0) the FSP header's space id/size."""
    buf = bytearray(PS)
    buf[4:8] = page_no.to_bytes(4, "big")
    buf[16:24] = lsn.to_bytes(8, "big")
    buf[34:38] = space_id.to_bytes(4, "big")
    if page_no == 0:
        buf[38:42] = space_id.to_bytes(4, "big")
        buf[46:50] = fsp_size.to_bytes(4, "big")
    return bytes(buf)


def write_delta(inc: Path, rel: str, pages: list[tuple[int, bytes]], space_id: int) -> Delta:
    path = inc / (rel + ".delta")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(build_delta(pages, PS))
    (inc / (rel + ".meta")).write_bytes(build_meta(DeltaMeta(PS, 0, space_id), "mariadb"))
    return Delta(Path(rel), path, DeltaMeta(PS, 0, space_id))


def test_delta_pages_written_file_sized_to_fsp_size(tmp_path: Path) -> None:
    base, inc = tmp_path / "base", tmp_path / "inc"
    (base / "db").mkdir(parents=True)
    (base / "db" / "t.ibd").write_bytes(b"".join(page(7, n, 100, fsp_size=8) for n in range(8)))
    d = write_delta(inc, "db/t.ibd", [(0, page(7, 0, 500, fsp_size=6)), (3, page(7, 3, 400))], 7)
    assert apply_delta(base, d, fsync=False) == 2
    data = (base / "db" / "t.ibd").read_bytes()
    assert len(data) == 6 * PS  # cut to the new FSP_SIZE
    assert data[3 * PS:4 * PS] == page(7, 3, 400)
    assert data[PS:2 * PS] == page(7, 1, 100)  # untouched
    assert apply_delta(base, d, fsync=False) == 2  # idempotent
    assert (base / "db" / "t.ibd").read_bytes() == data
    assert newest_page(base, PS, "mariadb") == (500, base / "db" / "t.ibd", 0)


def test_recreated_table_replaces_file_and_new_file_created(tmp_path: Path) -> None:
    base, inc = tmp_path / "base", tmp_path / "inc"
    (base / "db").mkdir(parents=True)
    (base / "db" / "t.ibd").write_bytes(b"".join(page(7, n, 100, fsp_size=8) for n in range(8)))
    d = write_delta(inc, "db/t.ibd", [(0, page(9, 0, 600, fsp_size=4)), (2, page(9, 2, 600))], 9)
    apply_delta(base, d, fsync=False)
    data = (base / "db" / "t.ibd").read_bytes()
    assert len(data) == 4 * PS
    assert data[PS:2 * PS] == bytes(PS)  # nothing of the old space id 7 is left
    new = write_delta(inc, "db2/n.ibd", [(0, page(11, 0, 700, fsp_size=5))], 11)
    apply_delta(base, new, fsync=False)
    assert (base / "db2" / "n.ibd").stat().st_size == 5 * PS


def test_incremental_structure_checked(tmp_path: Path) -> None:
    inc = tmp_path / "inc"
    write_delta(inc, "db/t.ibd", [(1, page(7, 1, 1))], 7)
    assert [d.rel for d in incremental_deltas(inc)] == [Path("db/t.ibd")]
    (inc / "db" / "t.ibd.meta").unlink()
    with pytest.raises(PrepareError, match=r"incomplete incremental: .*t\.ibd\.delta has no t\.ibd\.meta"):
        incremental_deltas(inc)
    write_delta(inc, "db/t.ibd", [(n, page(7, n, 1)) for n in range(3)], 7)
    delta = inc / "db" / "t.ibd.delta"
    delta.write_bytes(delta.read_bytes() + b"x")
    with pytest.raises(PrepareError, match=r"damaged incremental: .* is 65537 bytes, its clusters say 65536"):
        incremental_deltas(inc)


def test_damaged_journal_refused(tmp_path: Path) -> None:
    assert read_journal(tmp_path) is None
    (tmp_path / "innostream_chain_journal").write_text("link = /x\nphase = deltas\n")
    with pytest.raises(PrepareError, match="is damaged"):
        read_journal(tmp_path)
