"""Cut small real redo samples from real servers into fixtures/redo/ (see fixtures/README.md, section redo/).

For each server kind it starts a server through tools/sandbox.py with a small redo log, writes a few rows, lets
the page cleaner settle (``innodb_max_dirty_pages_pct=0``), and then takes one consistent snapshot: what the server
reports (status before), the redo bytes, what it reports again (status after). A snapshot whose two reports
differ is retried, so the recorded values describe exactly the bytes kept. Kept per sample:

* MariaDB: the 12288-byte prefix of ``ib_logfile0`` (header + both checkpoints) and the circular area from the
  older checkpoint's LSN (an mtr boundary) to 1 KiB past the end of the log, so a few KB of real mtrs.
* MySQL: the 2048-byte header of the ``#ib_redoN`` holding the checkpoint and its blocks from 4 blocks before
  ``align_down(checkpoint_lsn, 512)`` to 2 blocks past the end of the log.

``<name>.bin.gz`` is prefix + segment (gzip -9, mtime 0); ``<name>.json`` records where the segment sits in the
file and the server's own numbers, which the tests compare with what the parsers find.

Usage: python -m tools.make_redo_fixtures [--out fixtures/redo] [--kinds mariadb10,mysql9,mariadb11]
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from innostream.formats import log0files_io as my  # noqa: E402
from innostream.formats import mtr0log as ma  # noqa: E402

from tools.sandbox import Server, start_server  # noqa: E402

OPTIONS = {
    "mariadb10": ["--innodb-log-file-size=4M"],
    "mariadb11": ["--innodb-log-file-size=4M"],
    "mysql9": ["--innodb-redo-log-capacity=8M"],
}
NAMES = {"mariadb10": "mariadb-10.11", "mariadb11": "mariadb-11.8", "mysql9": "mysql-9.7"}


def mariadb_status(srv: Server) -> dict[str, Any]:
    text = srv.query("SHOW ENGINE INNODB STATUS")[0][2]
    out: dict[str, Any] = {}
    for key, pat in (
        ("log_sequence_number", r"Log sequence number\s+(\d+)"),
        ("log_flushed_up_to", r"Log flushed up to\s+(\d+)"),
        ("pages_flushed_up_to", r"Pages flushed up to\s+(\d+)"),
        ("last_checkpoint_at", r"Last checkpoint at\s+(\d+)"),
    ):
        m = re.search(pat, text)
        out[key] = int(m.group(1)) if m else None
    names = "'Innodb_checkpoint_age', 'Innodb_lsn_current', 'Innodb_lsn_flushed', 'Innodb_lsn_last_checkpoint'"
    for name, value in srv.query(f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})"):
        out[name] = int(value)
    return out


def mysql_status(srv: Server) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in srv.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_%'"):
        out[name] = int(value) if value.isdigit() else value
    text = srv.query("SHOW ENGINE INNODB STATUS")[0][2]
    for key, pat in (
        ("log_sequence_number", r"Log sequence number\s+(\d+)"),
        ("last_checkpoint_at", r"Last checkpoint at\s+(\d+)"),
    ):
        m = re.search(pat, text)
        out[key] = int(m.group(1)) if m else None
    return out


def load(srv: Server) -> None:
    srv.execute("CREATE DATABASE IF NOT EXISTS redo_fx")
    srv.execute(
        "CREATE TABLE IF NOT EXISTS redo_fx.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB"
    )
    for i in range(20):
        srv.execute("INSERT INTO redo_fx.t (v) VALUES (%s), (%s)", (f"row {i} a" * 5, f"row {i} b" * 5))


def snapshot_mariadb(srv: Server) -> tuple[bytes, dict[str, Any]]:
    path = srv.datadir / "ib_logfile0"
    for _attempt in range(50):
        before = mariadb_status(srv)
        data = path.read_bytes()
        after = mariadb_status(srv)
        if before == after and before["log_flushed_up_to"] == before["log_sequence_number"]:
            break
        time.sleep(0.5)
    else:
        raise SystemExit("server never settled")
    header, _cp = ma.find_checkpoint(data[: ma.START_OFFSET])
    slots = [c for c in ma.checkpoints(data[: ma.START_OFFSET], header.first_lsn) if c is not None]
    scan_from = min(c.checkpoint_lsn for c in slots)
    end = after["log_sequence_number"] + 1024
    size = len(data)
    start_off = ma.lsn_to_offset(scan_from, header.first_lsn, size)
    seg = bytearray()
    lsn = scan_from
    while lsn < end:  # follow the circle, so a wrapped sample stays contiguous in LSN order
        off = ma.lsn_to_offset(lsn, header.first_lsn, size)
        take = min(end - lsn, size - off)
        seg += data[off : off + take]
        lsn += take
    meta = {
        "flavor": "mariadb",
        "server_version": srv.version,
        "file": "ib_logfile0",
        "file_size": size,
        "prefix_size": ma.START_OFFSET,
        "segment_offset": start_off,
        "segment_lsn": scan_from,
        "segment_size": len(seg),
        "server_status": after,
        "notes": "segment starts at the older checkpoint's LSN and runs 1 KiB past the end of the log",
    }
    return data[: ma.START_OFFSET] + bytes(seg), meta


def snapshot_mysql(srv: Server) -> tuple[bytes, dict[str, Any]]:
    redo = srv.datadir / my.LOG_DIRECTORY_NAME
    for _attempt in range(50):
        before = mysql_status(srv)
        files = {p.name: p.read_bytes() for p in redo.iterdir() if not p.name.endswith("_tmp")}
        after = mysql_status(srv)
        if before == after and after["Innodb_redo_log_flushed_to_disk_lsn"] == after["Innodb_redo_log_current_lsn"]:
            break
        time.sleep(0.5)
    else:
        raise SystemExit("server never settled")
    cp_lsn = after["Innodb_redo_log_checkpoint_lsn"]
    for name, data in sorted(files.items()):  # noqa: B007 (name and data are used after the loop)
        hdr = my.parse_file_header(data[:512])
        if my.file_contains(hdr.start_lsn, len(data), cp_lsn):
            break
    else:
        raise SystemExit(f"no file holds checkpoint {cp_lsn}")
    first = max(hdr.start_lsn, my.align_down(cp_lsn) - 4 * 512)
    last = min(my.file_end_lsn(hdr.start_lsn, len(data)), my.align_down(after["Innodb_redo_log_current_lsn"]) + 3 * 512)
    seg = data[my.lsn_to_offset(hdr.start_lsn, first) : my.lsn_to_offset(hdr.start_lsn, last)]
    meta = {
        "flavor": "mysql",
        "server_version": srv.version,
        "file": name,
        "file_size": len(data),
        "prefix_size": my.LOG_FILE_HDR_SIZE,
        "segment_offset": my.lsn_to_offset(hdr.start_lsn, first),
        "segment_lsn": first,
        "segment_size": len(seg),
        "server_status": after,
        "notes": "segment: 4 blocks before the checkpoint block to 2 blocks past the block holding the end of log",
    }
    return data[: my.LOG_FILE_HDR_SIZE] + seg, meta


def make(kind: str, out: Path, scratch: Path) -> None:
    workdir = scratch / kind
    shutil.rmtree(workdir, ignore_errors=True)
    srv = start_server(kind, workdir, options=OPTIONS[kind])
    try:
        load(srv)
        srv.execute("SET GLOBAL innodb_max_dirty_pages_pct=0")
        time.sleep(3)
        load(srv)  # a few KB of mtrs after the checkpoint the page cleaner just wrote
        time.sleep(0.2)
        blob, meta = snapshot_mariadb(srv) if srv.flavor == "mariadb" else snapshot_mysql(srv)
    finally:
        srv.stop()
    name = NAMES[kind]
    meta["made_by"] = "tools/make_redo_fixtures.py"
    meta["server_options"] = OPTIONS[kind]
    (out / f"{name}-redo.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    with gzip.GzipFile(out / f"{name}-redo.bin.gz", "wb", compresslevel=9, mtime=0) as fh:
        fh.write(blob)
    print(f"{name}: {len(blob)} bytes, segment at {meta['segment_offset']} lsn {meta['segment_lsn']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "fixtures" / "redo")
    ap.add_argument("--kinds", default="mariadb10,mysql9,mariadb11")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/redo_task/fixtures"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for kind in args.kinds.split(","):
        make(kind, args.out, args.scratch)


if __name__ == "__main__":
    main()
