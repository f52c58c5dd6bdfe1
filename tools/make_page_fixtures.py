"""Cut small real page samples from real servers into fixtures/pages/ (see fixtures/README.md, "pages").

Each sample is a gzip of whole physical pages copied from a table's .ibd after a clean shutdown: page 0 (FSP header)
followed by one B-tree (INDEX) page. Next to them ``fixtures/pages/pages.json`` records what the *server* said about
the tablespace (space id, flags, page sizes from information_schema and @@innodb_page_size), the page numbers kept,
and how the sample was made, so the tests compare our parsing against the server and not against ourselves.

    .venv/bin/python -m tools.make_page_fixtures [--only NAME ...] [--workdir /tmp/pages_fixtures]

Needs root (the chroot kinds) and a few minutes; runs each configuration on its own server, one after the other.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tools.sandbox import Server, start_server

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "fixtures" / "pages"
FIL_PAGE_INDEX = 17855
ROWS = 1500  # enough for a few leaf pages at 4K..16K, small enough to keep the run short


@dataclass(frozen=True)
class Sample:
    """One fixture: a table made on a server configuration."""

    name: str  # fixture file stem, named after what it shows
    kind: str  # tools.sandbox kind
    table: str  # table name in schema `pg`
    ddl_tail: str  # table options after the column list
    options: list[str] = field(default_factory=list)  # server options (also used at initialize)
    notes: str = ""


#: A test key for MariaDB's file_key_management plugin (not a secret: it only encrypts the fixture tables).
KEYFILE = "{workdir}/keys.txt"
KEY_LINE = "1;" + "a1" * 32 + "\n"
KEY_OPTIONS = ["--plugin-load-add=file_key_management", f"--file-key-management-filename={KEYFILE}"]

# One server per distinct (kind, options); its samples are made together.
SAMPLES = [
    Sample("mariadb10-full_crc32-16k", "mariadb10", "plain", "ENGINE=InnoDB",
           notes="MariaDB 10.11 default innodb_checksum_algorithm=full_crc32"),
    Sample("mariadb10-full_crc32-page_compressed-16k", "mariadb10", "pcomp", "ENGINE=InnoDB PAGE_COMPRESSED=1",
           notes="page_compressed=1 (zlib), full_crc32: FIL_PAGE_TYPE = 0x8000 | size>>8, CRC at the compressed end"),
    Sample("mariadb10-compressed-kbs8", "mariadb10", "zip8", "ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8",
           notes="ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8: 8K physical pages, legacy flags, crc32 zip checksum"),
    Sample("mariadb10-crc32-16k", "mariadb10", "plain", "ENGINE=InnoDB", ["--innodb-checksum-algorithm=crc32"],
           notes="innodb_checksum_algorithm=crc32 (non-full_crc32 flags, checksum in header and trailer)"),
    Sample("mariadb10-crc32-page_compressed-16k", "mariadb10", "pcomp", "ENGINE=InnoDB PAGE_COMPRESSED=1",
           ["--innodb-checksum-algorithm=crc32"],
           notes="page_compressed with legacy flags: FIL_PAGE_TYPE 34354, no checksum before decompression"),
    Sample("mariadb10-full_crc32-4k", "mariadb10", "plain", "ENGINE=InnoDB", ["--innodb-page-size=4k"],
           notes="innodb_page_size=4k"),
    Sample("mysql9-crc32-16k", "mysql9", "plain", "ENGINE=InnoDB", notes="MySQL 9 default crc32"),
    Sample("mysql9-compressed-kbs8", "mysql9", "zip8", "ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8",
           notes="ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8"),
    Sample("mysql9-zlib-transparent-16k", "mysql9", "tcomp", "ENGINE=InnoDB COMPRESSION='zlib'",
           notes="transparent page compression (FIL_PAGE_COMPRESSED = 14, punched holes)"),
    Sample("mysql9-crc32-8k", "mysql9", "plain", "ENGINE=InnoDB", ["--innodb-page-size=8k"],
           notes="innodb_page_size=8k"),
    Sample("mysql9-innodb-16k", "mysql9", "plain", "ENGINE=InnoDB", ["--innodb-checksum-algorithm=innodb"],
           notes="innodb_checksum_algorithm=innodb: ut_fold new checksum at 0, old checksum at the trailer"),
    Sample("mysql9-innodb-compressed-kbs8", "mysql9", "zip8", "ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8",
           ["--innodb-checksum-algorithm=innodb"], notes="ROW_FORMAT=COMPRESSED with the innodb (adler32) checksum"),
    Sample("mysql9-none-16k", "mysql9", "plain", "ENGINE=InnoDB", ["--innodb-checksum-algorithm=none"],
           notes="innodb_checksum_algorithm=none: 0xDEADBEEF in both fields"),
    Sample("mariadb10-encrypted-full_crc32-16k", "mariadb10", "enc", "ENGINE=InnoDB ENCRYPTED=YES", KEY_OPTIONS,
           notes="ENCRYPTED=YES (file_key_management, key 1 = 'a1' * 32): crypt data on page 0, key version at 0"),
    Sample("mariadb10-encrypted-crc32-16k", "mariadb10", "enc", "ENGINE=InnoDB ENCRYPTED=YES",
           [*KEY_OPTIONS, "--innodb-checksum-algorithm=crc32"],
           notes="ENCRYPTED=YES with legacy flags: key version at 26, post-encryption crc32 at 30"),
    Sample("mariadb11-full_crc32-16k", "mariadb11", "plain", "ENGINE=InnoDB", notes="MariaDB 11.8 default"),
    # KEY_BLOCK_SIZE equal to innodb_page_size: still page0zip pages (ZIP_SSIZE set), as large as the logical ones.
    Sample("mysql9-compressed-kbs8-8k", "mysql9", "zip8", "ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8",
           ["--innodb-page-size=8k"], notes="innodb_page_size=8k + KEY_BLOCK_SIZE=8: zip page = logical page"),
    Sample("mariadb10-compressed-kbs8-8k", "mariadb10", "zip8", "ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8",
           ["--innodb-page-size=8k"], notes="innodb_page_size=8k + KEY_BLOCK_SIZE=8: zip page = logical page"),
    Sample("mariadb10-compressed-kbs4-4k", "mariadb10", "zip4", "ENGINE=InnoDB ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=4",
           ["--innodb-page-size=4k"], notes="innodb_page_size=4k + KEY_BLOCK_SIZE=4: zip page = logical page"),
]


def _fill(srv: Server, sample: Sample) -> None:
    srv.execute_script(
        [
            "CREATE DATABASE IF NOT EXISTS pg",
            f"CREATE TABLE pg.{sample.table} (id INT PRIMARY KEY, k INT, v VARCHAR(200), KEY(k)) {sample.ddl_tail}",
        ]
    )
    conn = srv.connect("pg")
    try:
        with conn.cursor() as cur:
            for start in range(0, ROWS, 250):
                rows = [(i, (i * 7919) % ROWS, f"row {i} " + "abcdefghij" * (i % 15))
                        for i in range(start, start + 250)]  # fmt: skip
                cur.executemany(f"INSERT INTO {sample.table} VALUES (%s, %s, %s)", rows)
    finally:
        conn.close()


def _server_facts(srv: Server, table: str) -> dict:
    """What the server itself reports about pg/<table>."""
    name = f"pg/{table}"
    page_size = int(srv.query("SELECT @@innodb_page_size")[0][0])
    if srv.flavor == "mysql":
        row = srv.query(
            "SELECT SPACE, FLAG, ROW_FORMAT, PAGE_SIZE, ZIP_PAGE_SIZE FROM information_schema.INNODB_TABLESPACES "
            "WHERE NAME = %s",
            (name,),
        )[0]
        space, flag, row_format, ps, zip_ps = row
        checksum = srv.query("SELECT @@innodb_checksum_algorithm")[0][0]
    else:
        row = srv.query(
            "SELECT SPACE, FLAG, ROW_FORMAT, PAGE_SIZE FROM information_schema.INNODB_SYS_TABLESPACES WHERE NAME = %s",
            (name,),
        )[0]
        space, flag, row_format, ps = row
        # MariaDB reports the physical size in PAGE_SIZE; it equals innodb_page_size when KEY_BLOCK_SIZE does.
        zip_ps = ps if row_format == "Compressed" else 0
        checksum = srv.query("SELECT @@innodb_checksum_algorithm")[0][0]
    return {
        "space_id": int(space),
        "is_flag": int(flag),  # as information_schema shows it (MariaDB adds memory-only bits 27..31)
        "row_format": row_format,
        "innodb_page_size": page_size,
        "is_page_size": int(ps),
        "zip_page_size": int(zip_ps or 0),
        "innodb_checksum_algorithm": checksum,
        "version": srv.version,
    }


def _cut(ibd: Path, physical: int) -> tuple[bytes, list[int], list[int]]:
    """Page 0 and the fullest B-tree page: INDEX, or a compressed one (MariaDB full_crc32 marker / legacy 34354,
    MySQL 14) — a leaf with many records shows more of the format than a near-empty root."""
    data = ibd.read_bytes()
    best, best_fill = -1, -1
    for no in range(3, len(data) // physical):
        page = data[no * physical : (no + 1) * physical]
        t = struct.unpack_from(">H", page, 24)[0]
        if t in (FIL_PAGE_INDEX, 34354, 14) or t & 0x8000:
            fill = len(page) - page.count(0)
            if fill > best_fill:
                best, best_fill = no, fill
    if best < 0:
        raise SystemExit(f"no index page found in {ibd}")
    keep = [0, best]
    types = [struct.unpack_from(">H", data, no * physical + 24)[0] for no in keep]
    return b"".join(data[no * physical : (no + 1) * physical] for no in keep), keep, types


def make(samples: list[Sample], workdir: Path) -> dict:
    """Run each server configuration once, make its tables, shut it down cleanly and cut the samples."""
    groups: dict[tuple[str, tuple[str, ...]], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.kind, tuple(s.options)), []).append(s)
    manifest: dict = {}
    for n, ((kind, options), members) in enumerate(groups.items()):
        wd = workdir / f"{kind}-{n}"
        if wd.exists():
            shutil.rmtree(wd)
        print(f"== {kind} {' '.join(options)}", file=sys.stderr)
        wd.mkdir(parents=True)
        (wd / "keys.txt").write_text(KEY_LINE)
        srv = start_server(kind, wd, options=[o.replace("{workdir}", str(wd)) for o in options])
        try:
            facts = {}
            for s in members:
                _fill(srv, s)
                facts[s.name] = _server_facts(srv, s.table)
        finally:
            srv.stop()  # clean shutdown: every page flushed, header and trailer settled
        for s in members:
            f = facts[s.name]
            physical = f["zip_page_size"] or f["innodb_page_size"]
            blob, pages, types = _cut(srv.datadir / "pg" / f"{s.table}.ibd", physical)
            out = OUT / f"{s.name}.pages.gz"
            out.write_bytes(gzip.compress(blob, 9, mtime=0))
            manifest[s.name] = {
                "file": out.name,
                "kind": kind,
                "server_options": list(options),
                "table": f"pg.{s.table}",
                "ddl": f"(id INT PRIMARY KEY, k INT, v VARCHAR(200), KEY(k)) {s.ddl_tail}",
                "rows": ROWS,
                "physical_page_size": physical,
                "pages": pages,
                "page_types": types,
                "notes": s.notes,
                **f,
            }
            print(f"   {out.name}: pages {pages} types {types} space {f['space_id']}", file=sys.stderr)
        shutil.rmtree(wd, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="sample names to (re)make; default all")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/pages_fixtures"))
    args = ap.parse_args(argv)
    chosen = [s for s in SAMPLES if not args.only or s.name in args.only]
    OUT.mkdir(parents=True, exist_ok=True)
    manifest_path = OUT / "pages.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update(make(chosen, args.workdir))
    manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
