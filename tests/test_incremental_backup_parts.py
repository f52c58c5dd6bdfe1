"""The incremental backup's parts without a server: the .delta writer of the copier (byte-equal to the format's
builder for every cluster boundary, in memory and spilled to disk, into a directory and through both stream
writers), the LSN option and the base reader's refusals on real files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from innostream import copier
from innostream.archive import ArchiveWriter
from innostream.archive.xbstream import XbstreamWriter
from innostream.backup import backup_target
from innostream.extract import extract
from innostream.formats.xtrabackup_delta import build_delta, cluster_capacity, iter_delta
from innostream.incremental import IncrementalBaseError, parse_lsn, resolve_base

PS = 4096  # small pages: a cluster is 1023 pages, so several clusters stay cheap


def _page(no: int) -> bytes:
    return no.to_bytes(4, "big") * (PS // 4)


def _write_delta(sink, pages: list[int], spool_dir: Path) -> tuple[int, bool]:
    """Write pages through the copier's .delta writer; returns its size and whether the spool went to disk."""
    out = copier._DeltaFile(sink, "t.ibd.delta", PS, spool_dir)
    try:
        for no in pages:
            out.add(no, memoryview(_page(no)))
        return out.finish(), bool(out.spool._rolled)
    finally:
        out.close()


CAP = cluster_capacity(PS)


@pytest.mark.parametrize("n", [0, 1, CAP - 1, CAP, CAP + 1, 2 * CAP, 2 * CAP + 5])
def test_delta_writer_equals_the_format_builder(n: int, tmp_path: Path) -> None:
    pages = list(range(3, 3 + 2 * n, 2))
    target = backup_target(tmp_path / "t", fsync=False)
    size, _ = _write_delta(target, pages, tmp_path)
    target.close()
    data = (tmp_path / "t" / "t.ibd.delta").read_bytes()
    assert len(data) == size
    assert data == build_delta(((no, _page(no)) for no in pages), PS)
    assert [no for no, _ in iter_delta(data, PS)] == pages


def test_delta_writer_spills_to_disk_and_streams_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster larger than the memory budget goes through an unlinked file; the stream writers (which need rising
    offsets) get the same bytes as the directory."""
    monkeypatch.setattr(copier, "DELTA_SPOOL_MEMORY", 64 * 1024)
    spool = tmp_path / "spool"
    spool.mkdir()
    pages = list(range(CAP + 40))
    expected = build_delta(((no, _page(no)) for no in pages), PS)
    buf = io.BytesIO()
    writer = ArchiveWriter(buf, level=1, threads=1, meta={})
    assert _write_delta(writer, pages, spool)[1], "the cluster went to disk"
    writer.close({})
    assert list(spool.iterdir()) == [], "the spool file is unlinked"
    out = tmp_path / "x"
    extract(io.BytesIO(buf.getvalue()), out, fsync=False)
    assert (out / "t.ibd.delta").read_bytes() == expected
    xb = io.BytesIO()
    xwriter = XbstreamWriter(xb, level=1, threads=1, meta={}, compress=False)
    _write_delta(xwriter, pages, spool)
    xwriter.close({})
    out2 = tmp_path / "x2"
    extract(io.BytesIO(xb.getvalue()), out2, fsync=False)
    assert (out2 / "t.ibd.delta").read_bytes() == expected


@pytest.mark.parametrize(("text", "message"), [("0", "out of range"), ("-5", "is not an LSN"), ("12ab", "not an LSN"),
                                               ("", "not an LSN"), (str(1 << 64), "64 bits")])
def test_lsn_option_refusals(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_lsn(text)
    assert parse_lsn(" 8200 ") == 8200


def test_base_reader_refusals(tmp_path: Path) -> None:
    with pytest.raises(IncrementalBaseError, match="not both"):
        resolve_base(tmp_path, 5)
    with pytest.raises(IncrementalBaseError, match="does not exist"):
        resolve_base(tmp_path / "missing", None)
    with pytest.raises(IncrementalBaseError, match="no xtrabackup_checkpoints"):
        resolve_base(tmp_path, None)
    # cut in the middle of a line: the backup did not finish writing it
    (tmp_path / "xtrabackup_checkpoints").write_bytes(b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 12")
    with pytest.raises(IncrementalBaseError, match=r"not a complete backup: .*cut short"):
        resolve_base(tmp_path, None)
    (tmp_path / "xtrabackup_checkpoints").write_bytes(
        b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 0\nlast_lsn = 0\n")
    with pytest.raises(IncrementalBaseError, match="to_lsn = 0"):
        resolve_base(tmp_path, None)
    (tmp_path / "garbage.isx").write_bytes(b"not an archive at all")
    with pytest.raises(IncrementalBaseError, match="not a complete backup: not an innostream archive"):
        resolve_base(tmp_path / "garbage.isx", None)
    # MariaDB 11.1+ names (mariadb_backup_*) are read too.
    (tmp_path / "xtrabackup_checkpoints").unlink()
    (tmp_path / "mariadb_backup_checkpoints").write_bytes(
        b"backup_type = log-applied\nfrom_lsn = 0\nto_lsn = 48300\nlast_lsn = 48400\n")
    base = resolve_base(tmp_path, None)
    assert base is not None
    assert (base.from_lsn, base.backup_type) == (48300, "log-applied")


def _fixture(name: str) -> bytes:
    import gzip

    return gzip.decompress((Path(__file__).parent.parent / "fixtures" / "meta" / f"{name}.gz").read_bytes())


def test_inspect_describes_a_real_mariadb_backup_delta(tmp_path: Path) -> None:
    """``innostream inspect`` on a real mariadb-backup 10.11 .delta/.meta (either name): sizes, space id, pages,
    LSNs, each page validated; a damaged page is named and the exit status is 3."""
    import subprocess
    import sys

    from innostream.inspect import inspect_path, render, result_ok

    (tmp_path / "t.ibd.delta").write_bytes(_fixture("mariadb-10.11-t.ibd.delta"))
    (tmp_path / "t.ibd.meta").write_bytes(_fixture("mariadb-10.11-t.ibd.meta"))
    for given in ("t.ibd.delta", "t.ibd.meta"):
        d = inspect_path(tmp_path / given)
        assert d["kind"] == "delta"
        assert (d["page_size"], d["zip_size"], d["space_id"], d["pages"], d["page_nos"]) == (16384, 0, 5, 1, [3])
        assert d["min_lsn"] == d["max_lsn"] > 0
        assert result_ok(d)
    text = render(d)
    assert "space id 5" in text
    assert "invalid pages:    none" in text
    damaged = bytearray(_fixture("mariadb-10.11-t.ibd.delta"))
    damaged[16384 + 200] ^= 0xFF  # a byte in the middle of page 3's image
    (tmp_path / "t.ibd.delta").write_bytes(damaged)
    d = inspect_path(tmp_path / "t.ibd.delta")
    assert d["invalid_count"] == 1
    assert d["invalid"][0]["page"] == 3
    # the console script: ``python -m innostream`` drops main()'s return value (the exit status of inspect)
    r = subprocess.run([str(Path(sys.executable).parent / "innostream"), "inspect", str(tmp_path / "t.ibd.meta")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 3, r.stderr
    assert "page 3:" in r.stdout
    # A backup directory: every .delta is inspected (ibdata1.delta is not taken for the system tablespace).
    inc = tmp_path / "inc"
    (inc / "db").mkdir(parents=True)
    (inc / "ibdata1.delta").write_bytes(_fixture("mariadb-10.11-ibdata1-unchanged.delta"))
    (inc / "ibdata1.meta").write_bytes(_fixture("mariadb-10.11-ibdata1.meta"))
    (inc / "db" / "t.ibd.delta").write_bytes(damaged)
    (inc / "db" / "t.ibd.meta").write_bytes(_fixture("mariadb-10.11-t.ibd.meta"))
    d = inspect_path(inc)
    assert (d["kind"], len(d["deltas"]), d["tablespaces"], d["invalid_pages"]) == ("datadir", 2, [], 1)
    assert not result_ok(d)
    assert "db/t.ibd.delta: page 3:" in render(d)
    (tmp_path / "t.ibd.delta").write_bytes(bytes(damaged[:20000]))
    d = inspect_path(tmp_path / "t.ibd.delta")
    assert d["error"]
    assert not result_ok(d)
