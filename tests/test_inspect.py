"""``innostream inspect``: on files built from real pages, and on the live data directories of real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from innostream.cli import cli
from innostream.formats.errors import EXIT_CORRUPT
from innostream.inspect import inspect_path, render

from tests.formats.test_pages import load
from tools.sandbox import Server


def make_tablespace(tmp_path: Path, name: str, fname: str = "t1.ibd") -> tuple[Path, dict, int]:
    """A tablespace file from a real sample: page 0, zero pages (never written), the real B-tree page at its
    number. Returns (path, manifest entry, physical page size)."""
    entry, page0, page = load(name)
    ps = entry["physical_page_size"]
    no = entry["pages"][1]
    path = tmp_path / fname
    path.write_bytes(page0 + bytes(ps * (no - 1)) + page + bytes(ps * 2))
    return path, entry, ps


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["inspect", *args], catch_exceptions=False)
    return res.exit_code, res.output


@pytest.mark.parametrize("name", ["mariadb10-full_crc32-16k", "mysql9-crc32-16k", "mariadb10-compressed-kbs8",
                                  "mariadb10-full_crc32-page_compressed-16k", "mysql9-zlib-transparent-16k"])
def test_inspect_tablespace_text(tmp_path: Path, name: str) -> None:
    path, entry, ps = make_tablespace(tmp_path, name)
    code, out = run(str(path))
    assert code == 0, out
    assert f"space id:         {entry['space_id']}\n" in out
    assert f"page size:        {entry['innodb_page_size']} logical, {ps} physical" in out
    assert "invalid pages:    none" in out
    flavor = "mysql" if name.startswith("mysql") else "mariadb"
    assert f"server family:    {flavor}" in out


def test_inspect_tablespace_json(tmp_path: Path) -> None:
    path, entry, _ps = make_tablespace(tmp_path, "mysql9-crc32-16k")
    code, out = run(str(path), "--json")
    assert code == 0
    d = json.loads(out)
    assert d["kind"] == "tablespace"
    assert d["space_id"] == entry["space_id"]
    assert d["pages"] == entry["pages"][1] + 3
    assert d["page_types"] == {"ALLOCATED": entry["pages"][1] + 1, "FSP_HDR": 1, "INDEX": 1}
    assert d["checksums"] == {"zero": entry["pages"][1] + 1, "crc32": 2}
    assert d["invalid"] == []
    assert d["ok"] is True
    _, page0, page = load("mysql9-crc32-16k")
    assert d["max_lsn"] == max(int.from_bytes(p[16:24], "big") for p in (page0, page))


def test_inspect_reports_corruption_and_exits_3(tmp_path: Path) -> None:
    path, entry, ps = make_tablespace(tmp_path, "mariadb10-full_crc32-16k")
    no = entry["pages"][1]
    data = bytearray(path.read_bytes())
    data[no * ps + 3000] ^= 0x40  # flipped byte in the B-tree page
    data[(no + 1) * ps + 100] = 7  # garbage in a never-written page
    path.write_bytes(bytes(data))
    code, out = run(str(path))
    assert code == EXIT_CORRUPT
    assert "invalid pages:    2" in out
    assert f"page {no}: full_crc32 checksum mismatch" in out
    assert f"page {no + 1}: page number 0 in page {no + 1}" in out
    code, out = run(str(path), "--json", "--no-fail")
    assert code == 0
    assert [x["page"] for x in json.loads(out)["invalid"]] == [no, no + 1]
    # ``python -m innostream`` exits with the status too (it once returned it and exited 0)
    res = subprocess.run([sys.executable, "-m", "innostream", "inspect", str(path)], capture_output=True, check=False)
    assert res.returncode == EXIT_CORRUPT


def test_inspect_flavor_option_overrides(tmp_path: Path) -> None:
    path, _, _ = make_tablespace(tmp_path, "mariadb10-crc32-16k")
    code, out = run(str(path), "--flavor", "mariadb")
    assert code == 0
    assert "mariadb (from option)" in out
    # MySQL flags cannot be read as MariaDB flags: a one-line error in the report, exit 3.
    path, _, _ = make_tablespace(tmp_path, "mysql9-crc32-16k", "m.ibd")
    code, out = run(str(path), "--flavor", "mariadb")
    assert code == EXIT_CORRUPT
    assert "invalid mariadb FSP_SPACE_FLAGS 0x4021" in out


def test_inspect_small_datadir_table(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    make_tablespace(tmp_path / "db", "mariadb10-full_crc32-16k", "a.ibd")
    make_tablespace(tmp_path / "db", "mariadb10-compressed-kbs8", "z.ibd")
    (tmp_path / "aria_log_control").write_bytes(b"")  # a MariaDB datadir marker
    (tmp_path / "db" / "junk.frm").write_bytes(b"not a tablespace")
    code, out = run(str(tmp_path))
    assert code == 0, out
    assert "(mariadb)" in out
    assert "2 tablespaces, 0 invalid pages, 0 unreadable" in out
    lines = [x for x in out.splitlines() if x.endswith(".ibd")]
    assert [x.split()[-1] for x in lines] == ["db/a.ibd", "db/z.ibd"]
    assert lines[1].split()[:3] == ["7", "16384", "8192"]


def test_inspect_missing_path_is_a_usage_error() -> None:
    code, _ = run("/nonexistent/x.ibd")
    assert code == 2


def test_inspect_lone_truncated_file(tmp_path: Path) -> None:
    p = tmp_path / "short.ibd"
    p.write_bytes(b"\x01" * 100)
    code, out = run(str(p))
    assert code == EXIT_CORRUPT
    assert "too short for a tablespace" in out


# --- live servers ----------------------------------------------------------------------------------------------------
def _server_space_ids(srv: Server) -> dict[Path, int]:
    """Tablespace file -> space id, as the server reports them."""
    if srv.flavor == "mysql":
        rows = srv.query("SELECT SPACE, PATH FROM information_schema.INNODB_DATAFILES")
    else:
        rows = srv.query("SELECT SPACE, FILENAME FROM information_schema.INNODB_SYS_TABLESPACES")
    out = {}
    for space, name in rows:
        p = Path(name)
        p = p if p.is_absolute() else srv.datadir / p
        out[Path(os.path.normpath(p))] = int(space)
    return out


def test_inspect_live_datadir(server: Server) -> None:
    """Every tablespace of a running server is valid, and each space id is the one information_schema shows."""
    server.execute("CREATE DATABASE IF NOT EXISTS inspect_t")
    server.execute("CREATE TABLE IF NOT EXISTS inspect_t.z (id INT PRIMARY KEY, v VARCHAR(100)) "
                   "ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8")  # fmt: skip
    server.execute("REPLACE INTO inspect_t.z VALUES (1, 'a'), (2, 'b')")
    if server.flavor == "mariadb":
        server.execute("CREATE TABLE IF NOT EXISTS inspect_t.pc (id INT PRIMARY KEY, v TEXT) PAGE_COMPRESSED=1")
        server.execute("REPLACE INTO inspect_t.pc VALUES (1, REPEAT('x', 5000))")
    server.flush_dirty()
    expected = _server_space_ids(server)
    result = inspect_path(server.datadir)
    assert result["kind"] == "datadir"
    assert result["flavor"] == server.flavor
    bad = [(t["path"], t.get("error"), t["invalid"]) for t in result["tablespaces"] if not t["ok"]]
    assert bad == [], render(result)
    seen = {Path(t["path"]): t for t in result["tablespaces"]}
    checked = 0
    for path, space_id in expected.items():
        if path not in seen or seen[path]["space_id"] is None:
            assert not path.exists() or path.name.startswith("ibtmp") or path.suffix == ".ibt", path
            continue
        assert seen[path]["space_id"] == space_id, path
        checked += 1
    ibds = [p for p in expected if p.suffix == ".ibd" and "sample" in p.parts]
    assert ibds, expected
    assert all(p in seen for p in ibds)
    assert checked >= len(ibds) + 1  # every sample table plus at least the system tablespace
    assert seen[server.datadir / "ibdata1"]["space_id"] == 0
    # The CLI gives the same verdict and shows the redo files.
    code, out = run(str(server.datadir))
    assert code == 0, out
    assert "0 invalid pages, 0 unreadable" in out
    assert "redo:" in out


def test_inspect_multi_file_system_tablespace(fresh_server) -> None:
    """ibdata2 has no page 0 of its own: it is checked with ibdata1's description, numbering continued."""
    srv = fresh_server("mariadb10", options=["--innodb-data-file-path=ibdata1:4M;ibdata2:12M:autoextend"])
    srv.execute("CREATE DATABASE IF NOT EXISTS m")
    srv.execute("CREATE TABLE m.t (id INT PRIMARY KEY, v VARCHAR(100)) ENGINE=InnoDB")
    srv.execute("INSERT INTO m.t VALUES (1, 'x')")
    srv.stop()
    result = inspect_path(srv.datadir)
    by_name = {Path(t["path"]).name: t for t in result["tablespaces"]}
    assert by_name["ibdata1"]["pages"] == 256  # 4M of 16K pages
    assert by_name["ibdata2"]["first_page_no"] == 256
    assert by_name["ibdata2"]["space_id"] == 0
    assert result["invalid_pages"] == 0, render(result)
    assert result["errors"] == 0, render(result)
    # A page of ibdata2 read back at the wrong position would still be caught by its checksum.
    data = bytearray((srv.datadir / "ibdata2").read_bytes())
    written = [i for i in range(len(data) // 16384) if any(data[i * 16384 : i * 16384 + 64])]
    assert written, "the server did not use ibdata2"
    i = written[0]
    data[i * 16384 + 9000] ^= 1
    (srv.datadir / "ibdata2").write_bytes(bytes(data))
    result = inspect_path(srv.datadir)
    assert result["invalid_pages"] == 1, render(result)
    bad = next(t for t in result["tablespaces"] if Path(t["path"]).name == "ibdata2")["invalid"]
    assert bad[0]["page"] == 256 + i


@pytest.mark.parametrize(("name", "kbs"), [("mysql9-compressed-kbs8-8k", 8), ("mariadb10-compressed-kbs4-4k", 4),
                                           ("mariadb10-compressed-kbs8", 8), ("mysql9-crc32-16k", 0)])
def test_inspect_names_row_format_compressed_from_flags(tmp_path: Path, name: str, kbs: int) -> None:
    """A compressed table whose KEY_BLOCK_SIZE equals the page size is still ROW_FORMAT=COMPRESSED (ZIP_SSIZE)."""
    path, _entry, _ps = make_tablespace(tmp_path, name)
    code, out = run(str(path))
    assert code == 0, out
    assert (f"ROW_FORMAT=COMPRESSED, KEY_BLOCK_SIZE={kbs}" in out) == bool(kbs), out
    code, out = run(str(path), "--json")
    assert json.loads(out)["zip_size"] == kbs * 1024
