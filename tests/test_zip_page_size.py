"""ROW_FORMAT=COMPRESSED with KEY_BLOCK_SIZE equal to innodb_page_size, on real servers, end to end.

Such a table is still stored as page0zip pages (ZIP_SSIZE set in the FSP flags), only as large as the logical page.
``innostream backup`` used to judge them as uncompressed pages and stopped with "page 0 fails validation". Here
every page of the live .ibd must validate, ``backup`` (to a directory and as a stream through ``extract``) must
succeed, and the prepared, restored copy must hold the same rows as the source.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from innostream.formats.buf0checksum import validate_pages
from innostream.formats.fsp0fsp import space_info
from innostream.recovery.prepare import PrepareConfig, prepare_backup
from innostream.recovery.restore import RestoreConfig, restore_backup

from tools.sandbox import Server, start_server, table_checksums

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "zip_eq"
ROWS = 400


def _make_table(srv: Server, key_block_size: int) -> Path:
    """A compressed table with a few hundred rows, flushed to disk; returns its .ibd."""
    srv.execute(f"DROP DATABASE IF EXISTS `{SCHEMA}`")
    srv.execute(f"CREATE DATABASE `{SCHEMA}`")
    srv.execute(f"CREATE TABLE `{SCHEMA}`.t (id INT PRIMARY KEY, k INT, v VARCHAR(200), KEY(k)) ENGINE=InnoDB "
                f"ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE={key_block_size}")  # fmt: skip
    conn = srv.connect(database=SCHEMA)
    try:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO t VALUES (%s, %s, %s)",
                            [(i, (i * 7919) % ROWS, f"row {i} " + "abcdefghij" * (i % 17)) for i in range(ROWS)])
            cur.execute("FLUSH TABLES t FOR EXPORT")  # every page of t reaches the file
            cur.execute("UNLOCK TABLES")
    finally:
        conn.close()
    return srv.datadir / SCHEMA / "t.ibd"


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "innostream", *args], capture_output=True, text=True, cwd=REPO,
                          check=False, timeout=900, **kw)  # type: ignore[call-overload]


def _roundtrip(srv: Server, tmp_path: Path, key_block_size: int, options: list[str]) -> None:
    page_size = int(srv.query("SELECT @@innodb_page_size")[0][0])
    assert key_block_size * 1024 == page_size  # the case under test: zip page = logical page
    ibd = _make_table(srv, key_block_size)

    # The live file: page 0 says ROW_FORMAT=COMPRESSED, and every page is a valid zip page.
    data = ibd.read_bytes()
    info = space_info(data[:page_size], srv.flavor)
    assert info.zip_size == info.physical_page_size == info.logical_page_size == page_size
    assert validate_pages(data, info, 0) == []

    # backup --target-dir (the reported failure), prepare with the flavour's server, restore, compare.
    backup = tmp_path / "backup"
    res = _run(["backup", "--target-dir", str(backup), "--socket", str(srv.socket), "--user", "root"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fails validation" not in res.stderr
    result = prepare_backup(PrepareConfig(backup, server_binary=srv.server_binary, use_memory="64M"))
    assert result.recovered_lsn is not None
    assert result.recovered_lsn >= result.last_lsn
    datadir = tmp_path / "restored"
    restore_backup(RestoreConfig(backup, datadir))
    restored = start_server(srv.kind, tmp_path / "run", datadir=datadir, initialize=False, options=options)
    try:
        got = table_checksums(restored, SCHEMA)
        assert got == table_checksums(srv, SCHEMA)
        assert got["t"][0] == ROWS
    finally:
        restored.stop()

    # backup --stream | extract: extract validates every page again on the receiving side.
    target = tmp_path / "extracted"
    producer = subprocess.Popen([sys.executable, "-m", "innostream", "backup", "--stream", "--socket", str(srv.socket),
                                 "--user", "root"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    extract = _run(["extract", "-C", str(target)], stdin=producer.stdout)
    assert producer.stdout is not None
    producer.stdout.close()
    assert producer.wait(timeout=900) == 0
    assert extract.returncode == 0, extract.stderr[-3000:]
    assert (target / SCHEMA / "t.ibd").stat().st_size >= 4 * page_size


@pytest.mark.parametrize(
    ("kind", "page_size", "key_block_size"),
    [("mysql9", "8k", 8), ("mariadb10", "8k", 8), ("mariadb10", "4k", 4), ("mariadb11", "8k", 8)],
    ids=["mysql9-8k-kbs8", "mariadb10-8k-kbs8", "mariadb10-4k-kbs4", "mariadb11-8k-kbs8"],
)
def test_small_pages_key_block_size_equal(kind: str, page_size: str, key_block_size: int, fresh_server,
                                         tmp_path: Path) -> None:  # fmt: skip
    options = [f"--innodb-page-size={page_size}"]
    _roundtrip(fresh_server(kind, options=options), tmp_path, key_block_size, options)


@pytest.mark.parametrize("kind", ["mysql9", "mariadb10"])
def test_16k_pages_key_block_size_16(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The same case at the default page size: KEY_BLOCK_SIZE=16 on 16K pages."""
    srv: Server = request.getfixturevalue(kind)
    try:
        _roundtrip(srv, tmp_path, 16, [])
    finally:
        srv.execute(f"DROP DATABASE IF EXISTS `{SCHEMA}`")
