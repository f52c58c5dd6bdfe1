"""``extract --include/--exclude``: one table out of an archive, then ``prepare --export`` and ``import``.

* the member filter (no server): globs choose among user-table files only; a partition's file answers to its
  table's name; what prepare needs (root files, system schemas, db.opt, metadata) is always kept;
* on the three real servers: an archive file of the server is extracted with ``--include 'sample/t_partitioned.*'``
  (and an ``--exclude``); only that user table's files are written, fewer bytes than a full extract; the result
  prepares with --export (the tables left out are dropped) and the table imports ``--as`` another name with the
  source's CHECKSUM TABLE.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from innostream.extract import MemberFilter
from innostream.sink import NullSink

from tests.test_table_import import cli, import_cli
from tools.sandbox import Server


def test_filter_keeps_what_prepare_needs() -> None:
    f = MemberFilter(NullSink(), ["shop/orders.*"], ["shop/orders.cfg"])
    for name in ("ibdata1", "undo_001", "mysql.ibd", "xtrabackup_logfile", "ib_logfile0", "xtrabackup_checkpoints",
                 "mysql/innodb_table_stats.ibd", "sys/sys_config.ibd", "shop/db.opt", "shop/orders.ibd",
                 "shop/orders.frm", "shop/orders#p#p0.ibd", "shop/orders#P#p1.ibd"):
        assert f.keeps(name), name
    assert f.keeps("shop/items.frm")  # definitions stay: prepare drops the tables left out
    for name in ("shop/items.ibd", "shop/orders_old.ibd", "other/orders.ibd", "shop/orders.cfg"):
        assert not f.keeps(name), name
    assert MemberFilter(NullSink(), [], ["*/big*"]).keeps("shop/orders.ibd")
    assert not MemberFilter(NullSink(), [], ["*/big*"]).keeps("shop/big_log.ibd")


def _written(stderr: str) -> int:
    m = re.search(r"extracted \d+ of \d+ files \((\d+) bytes of data written", stderr)
    assert m, stderr
    return int(m.group(1))


def _allocated(root: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in root.rglob("*") if p.is_file())


def test_one_table_from_an_archive(server: Server, tmp_path: Path) -> None:
    srv = server
    archive = tmp_path / "b.inno"
    with open(archive, "wb") as out:
        res = subprocess.run([sys.executable, "-m", "innostream", "backup", "--socket", str(srv.socket), "--user",
                              "root", "--stream"], stdout=out, stderr=subprocess.PIPE, text=True, check=False,
                             cwd=Path(__file__).resolve().parents[1], timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    want = srv.query("CHECKSUM TABLE sample.t_partitioned")[0][1]
    target = tmp_path / "one"
    res = cli("extract", "-C", str(target), "--include", "sample/t_partitioned.*", "--exclude", "*.cfg",
              "--no-fsync", str(archive))
    assert res.returncode == 0
    written = _written(res.stderr)
    full = sum(p.stat().st_size for p in (target / "sample").glob("*.ibd"))
    names = sorted(p.name for p in (target / "sample").iterdir())
    assert [n for n in names if n.endswith(".ibd")] == [f"t_partitioned{'#p#' if srv.flavor == 'mysql' else '#P#'}"
                                                        f"p{i}.ibd" for i in range(4)]
    assert (target / "innostream_partial.json").is_file()
    assert full <= written
    whole = tmp_path / "whole"
    res = cli("extract", "-C", str(whole), "--no-fsync", str(archive))
    assert res.returncode == 0
    one_bytes, whole_bytes = _allocated(target), _allocated(whole)
    print(f"{srv.kind}: archive {archive.stat().st_size} bytes; on disk: --include {one_bytes} bytes, a whole "
          f"extract {whole_bytes} bytes")
    assert one_bytes < whole_bytes

    res = cli("prepare", "--export", "--target-dir", str(target), "--server-binary", str(srv.server_binary),
              "--no-fsync")
    assert res.returncode == 0
    assert "partial backup: dropped" in res.stderr
    res = import_cli(srv, target, "--table", "sample.t_partitioned", "--as", "sample.t_partitioned_back")
    assert res.returncode == 0
    try:
        assert srv.query("CHECKSUM TABLE sample.t_partitioned_back")[0][1] == want
    finally:
        srv.execute("DROP TABLE IF EXISTS sample.t_partitioned_back")
