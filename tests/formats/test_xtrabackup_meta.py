"""Backup metadata and incremental delta formats, against real mariadb-backup 10.11 files (fixtures/meta/)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from innostream.formats.errors import BadMagic, Corrupt, Truncated
from innostream.formats.xtrabackup_delta import (
    XB_DELTA_MAGIC,
    DeltaMeta,
    build_cluster_header,
    build_delta,
    build_meta,
    cluster_capacity,
    delta_header_struct,
    iter_delta,
    parse_cluster_header,
    parse_meta,
)
from innostream.formats.xtrabackup_meta import (
    BinlogInfo,
    Checkpoints,
    build_backup_my_cnf,
    build_binlog_info,
    build_checkpoints,
    build_info,
    format_binlog_pos,
    mask_argv,
    metadata_names,
    parse_backup_my_cnf,
    parse_binlog_info,
    parse_checkpoints,
    parse_info,
    tool_command,
)

META = Path(__file__).resolve().parents[2] / "fixtures" / "meta"


def fixture(name: str) -> bytes:
    return gzip.decompress((META / f"{name}.gz").read_bytes())


# --- checkpoints ----------------------------------------------------------------------------------------------------


def test_checkpoints_real_full_roundtrip() -> None:
    raw = fixture("mariadb-10.11-full-xtrabackup_checkpoints")
    cp = parse_checkpoints(raw)
    assert cp == Checkpoints("full-backuped", 0, 44404, 48300)
    assert build_checkpoints(cp, "mariadb") == raw


def test_checkpoints_real_incremental() -> None:
    raw = fixture("mariadb-10.11-incremental-xtrabackup_checkpoints")
    cp = parse_checkpoints(raw)
    assert (cp.backup_type, cp.from_lsn, cp.to_lsn, cp.last_lsn) == ("incremental", 48763, 50624, 50776)
    assert build_checkpoints(cp, "mariadb") == raw


def test_checkpoints_mysql_layout_and_state_change() -> None:
    cp = Checkpoints("full-backuped", 0, 31234567, 31234999, flushed_lsn=31234999)
    raw = build_checkpoints(cp, "mysql")
    assert raw == (
        b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 31234567\nlast_lsn = 31234999\n"
        b"flushed_lsn = 31234999\nredo_memory = 0\nredo_frames = 0\n"
    )
    prepared = parse_checkpoints(raw).with_type("full-prepared")
    assert parse_checkpoints(build_checkpoints(prepared, "mysql")) == prepared
    with pytest.raises(ValueError, match="unknown backup_type"):
        cp.with_type("half-baked")


def test_checkpoints_unknown_keys_kept() -> None:
    raw = b"backup_type = log-applied\nfrom_lsn = 1\nto_lsn = 2\nlast_lsn = 3\nfuture_key = x y\n"
    cp = parse_checkpoints(raw)
    assert cp.extra == (("future_key", "x y"),)
    assert b"future_key = x y\n" in build_checkpoints(cp, "mariadb")


@pytest.mark.parametrize("missing", ["backup_type", "from_lsn", "to_lsn", "last_lsn"])
def test_checkpoints_required_keys(missing: str) -> None:
    lines = {"backup_type": "full-backuped", "from_lsn": "0", "to_lsn": "5", "last_lsn": "9"}
    del lines[missing]
    raw = "".join(f"{k} = {v}\n" for k, v in lines.items()).encode()
    with pytest.raises(Corrupt, match=missing) as err:
        parse_checkpoints(raw)
    assert err.value.file == "xtrabackup_checkpoints"


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"backup_type = weird\nfrom_lsn = 0\nto_lsn = 1\nlast_lsn = 1\n", "unknown backup_type"),
        (b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = -1\nlast_lsn = 1\n", "not a non-negative integer"),
        (b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 1\nlast_lsn = 48", "cut short"),
        (b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn\n", "without '='"),
        (b"", "backup_type"),
    ],
)
def test_checkpoints_bad(raw: bytes, match: str) -> None:
    with pytest.raises(Corrupt, match=match):
        parse_checkpoints(raw)


@given(
    st.sampled_from(["full-backuped", "incremental", "log-applied", "full-prepared"]),
    st.integers(0, 2**63),
    st.integers(0, 2**63),
    st.integers(0, 2**63),
    st.sampled_from(["mariadb", "mysql"]),
)
def test_checkpoints_roundtrip_property(kind: str, a: int, b: int, c: int, flavor: str) -> None:
    cp = Checkpoints(kind, a, b, c, flushed_lsn=c if flavor == "mysql" else 0)
    assert parse_checkpoints(build_checkpoints(cp, flavor)) == cp


# --- info -----------------------------------------------------------------------------------------------------------


def test_info_real_roundtrip() -> None:
    raw = fixture("mariadb-10.11-full-xtrabackup_info")
    info = parse_info(raw)
    assert info["name"] == ""
    assert info["tool_command"].endswith("--user=bk --password=...")
    assert info["binlog_pos"] == format_binlog_pos("binlog.000001", 1183, "0-1-5")
    assert build_info(info, "mariadb") == raw
    inc = fixture("mariadb-10.11-incremental-xtrabackup_info")
    assert build_info(parse_info(inc), "mariadb") == inc


def test_info_order_and_missing() -> None:
    info = parse_info(fixture("mariadb-10.11-full-xtrabackup_info"))
    shuffled = dict(reversed(list(info.items())))
    assert build_info(shuffled, "mariadb") == build_info(info, "mariadb")
    mysql = build_info({**info, "encrypted": "N", "server_flavor": "MySQL"}, "mysql").decode().splitlines()
    assert mysql[-2:] == ["encrypted = N", "server_flavor = MySQL"]
    del info["uuid"]
    with pytest.raises(ValueError, match="uuid"):
        build_info(info, "mariadb")


def test_mask_argv_matches_mariadb_backup() -> None:
    # The tool_command of the real fixtures: "--password=secret123" and "-psecret123" became these.
    argv = ["--backup", "--target-dir=/b", "--user=bk", "--password=secret123"]
    assert tool_command(argv) == "--backup --target-dir=/b --user=bk --password=..."
    assert mask_argv(["-u", "bk", "-psecret123"]) == ["-u", "bk", "-p..."]
    assert mask_argv(["--pass=x", "--encrypt-key", "k3y", "--transition-key=t"]) == [
        "--pass=...", "--encrypt-key", "...", "--transition-key=..."]
    # --password without a value prompts; the next argument is not a secret.
    assert mask_argv(["--password", "--user=x", "-p", "db"]) == ["--password", "--user=x", "-p", "db"]
    assert mask_argv(["--port=3306", "-P3306", "--pid-file=x"]) == ["--port=3306", "-P3306", "--pid-file=x"]


# --- binlog info ----------------------------------------------------------------------------------------------------


def test_binlog_info_real_roundtrip() -> None:
    raw = fixture("mariadb-10.11-full-xtrabackup_binlog_info")
    info = parse_binlog_info(raw)
    assert info == BinlogInfo("binlog.000001", 1183, "0-1-5")
    assert build_binlog_info(info) == raw


def test_binlog_info_mysql_gtid_set_and_bad() -> None:
    raw = b"binlog.000004\t157\t3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1-3\n"
    assert parse_binlog_info(raw).gtid.count(":") == 2
    assert build_binlog_info(BinlogInfo("binlog.000004", 157)) == b"binlog.000004\t157\n"
    with pytest.raises(Corrupt):
        parse_binlog_info(b"binlog.000004 157\n")


# --- backup-my.cnf --------------------------------------------------------------------------------------------------


def test_backup_my_cnf_real_roundtrip() -> None:
    raw = fixture("mariadb-10.11-full-backup-my.cnf")
    options = parse_backup_my_cnf(raw)
    assert options["innodb_page_size"] == "16384"
    assert options["innodb_log_file_size"] == "100663296"
    assert build_backup_my_cnf(options, "mariadb") == raw


def test_backup_my_cnf_mysql() -> None:
    opts = {
        "innodb_checksum_algorithm": "crc32", "innodb_log_checksums": "ON", "innodb_data_file_path":
        "ibdata1:12M:autoextend", "innodb_log_file_size": 50331648, "innodb_page_size": 16384,
        "innodb_undo_directory": "./", "innodb_undo_tablespaces": 2, "server_id": 1,
        "innodb_redo_log_encrypt": "OFF", "innodb_undo_log_encrypt": "OFF", "server_uuid": "abc",
    }
    raw = build_backup_my_cnf(opts, "mysql")
    assert raw.startswith(b"# This MySQL options file was generated by innobackupex.\n\n# The MySQL server\n[mysqld]\n")
    parsed = parse_backup_my_cnf(raw + b"[client]\nuser=x\n")
    assert parsed == {k: str(v) for k, v in opts.items()}
    with pytest.raises(ValueError, match="server_id"):
        build_backup_my_cnf({k: v for k, v in opts.items() if k != "server_id"}, "mysql")


def test_metadata_names() -> None:
    assert metadata_names("mariadb", (10, 11, 9))["checkpoints"] == "xtrabackup_checkpoints"
    assert metadata_names("mariadb", (11, 8, 2))["checkpoints"] == "mariadb_backup_checkpoints"
    assert metadata_names("mysql", (9, 7, 4))["info"] == "xtrabackup_info"


# --- .delta / .meta -------------------------------------------------------------------------------------------------


def test_delta_real_sample() -> None:
    raw = fixture("mariadb-10.11-t.ibd.delta")
    pages = [(n, bytes(img)) for n, img in iter_delta(raw, 16384)]
    assert [n for n, _ in pages] == [3]
    # The image is the page it claims to be: FIL_PAGE_OFFSET (bytes 4..8) == 3, space id (34..38) == 5.
    assert struct.unpack_from(">I", pages[0][1], 4)[0] == 3
    assert struct.unpack_from(">I", pages[0][1], 34)[0] == 5
    assert build_delta(pages, 16384) == raw
    meta_raw = fixture("mariadb-10.11-t.ibd.meta")
    meta = parse_meta(meta_raw)
    assert meta == DeltaMeta(page_size=16384, zip_size=0, space_id=5)
    assert build_meta(meta, "mariadb") == meta_raw


def test_delta_real_unchanged() -> None:
    raw = fixture("mariadb-10.11-ibdata1-unchanged.delta")
    assert list(iter_delta(raw, 16384)) == []
    assert build_delta([], 16384) == raw
    assert parse_meta(fixture("mariadb-10.11-ibdata1.meta")).space_id == 0


def test_delta_header_construct_agrees_with_fast_path() -> None:
    for page_size in (4096, 16384):
        for nos, last in (([], True), ([7, 1, 99], False), (list(range(cluster_capacity(page_size))), True)):
            raw = build_cluster_header(nos, page_size, last=last)
            spec = delta_header_struct(page_size).parse(raw)
            assert spec.magic == (b"XTRA" if last else XB_DELTA_MAGIC)
            slots = list(spec.slots)
            expect = slots[: slots.index(0xFFFFFFFF)] if 0xFFFFFFFF in slots else slots
            fast = parse_cluster_header(raw, page_size)
            assert list(fast.page_nos) == expect == nos
            assert fast.last == last
            assert delta_header_struct(page_size).build(spec) == raw


def test_delta_multi_cluster_roundtrip() -> None:
    page_size = 4096
    cap = cluster_capacity(page_size)
    pages = [(n * 3, bytes([n % 251]) * page_size) for n in range(cap + 5)]
    raw = build_delta(pages, page_size)
    assert raw[:4] == b"xtra"
    assert raw[(cap + 1) * page_size:][:4] == b"XTRA"
    assert len(raw) == (cap + 1 + 1 + 5) * page_size
    assert [(n, bytes(i)) for n, i in iter_delta(raw, page_size)] == pages
    # Exactly full last cluster: no terminator.
    full = build_delta(pages[:cap], page_size)
    assert 0xFFFFFFFF not in struct.unpack_from(f">{cap}I", full, 4)
    assert len(list(iter_delta(full, page_size))) == cap


def test_delta_errors() -> None:
    raw = build_delta([(1, b"\1" * 4096), (2, b"\2" * 4096)], 4096)
    with pytest.raises(Truncated) as err:
        list(iter_delta(raw[:-1], 4096, file="t.ibd.delta"))
    assert err.value.file == "t.ibd.delta"
    assert err.value.offset == 0
    with pytest.raises(BadMagic):
        list(iter_delta(b"xtrb" + raw[4:], 4096))
    with pytest.raises(Corrupt, match="after the last"):
        list(iter_delta(raw + b"\0" * 4096, 4096))
    not_full = build_cluster_header([1], 4096, last=False) + b"\0" * 4096
    with pytest.raises(Corrupt, match="not full"):
        list(iter_delta(not_full, 4096))
    with pytest.raises(Truncated):
        list(iter_delta(b"", 4096))
    with pytest.raises(Corrupt, match="page size"):
        list(iter_delta(raw, 1000))


def test_meta_variants() -> None:
    pxb = build_meta(DeltaMeta(16384, 8192, 12, 0x29), "mysql")
    assert pxb == b"page_size = 16384\nzip_size = 8192\nspace_id = 12\nspace_flags = 41\n"
    meta = parse_meta(pxb)
    assert meta.physical_page_size == 8192
    assert parse_meta(b"page_size = 16384\n").space_id is None
    with pytest.raises(Corrupt, match="page_size"):
        parse_meta(b"zip_size = 0\n")
    with pytest.raises(Corrupt):
        parse_meta(b"page_size = 12345\n")


# --- MariaDB 11.8 (mariadb_backup_* names, server without GTIDs) ----------------------------------------------------


def test_mariadb_11_8_files_roundtrip() -> None:
    cp_raw = fixture("mariadb-11.8-full-mariadb_backup_checkpoints")
    assert build_checkpoints(parse_checkpoints(cp_raw, file="mariadb_backup_checkpoints"), "mariadb") == cp_raw
    info_raw = fixture("mariadb-11.8-full-mariadb_backup_info")
    info = parse_info(info_raw, file="mariadb_backup_info")
    assert build_info(info, "mariadb") == info_raw
    # No GTID yet: mariadb-backup still writes the GTID part, empty.
    assert info["binlog_pos"] == format_binlog_pos("binlog.000001", 325, "", flavor="mariadb")
    assert format_binlog_pos("binlog.000001", 325, "") == "filename 'binlog.000001', position '325'"
    cnf_raw = fixture("mariadb-11.8-full-backup-my.cnf")
    assert parse_backup_my_cnf(cnf_raw)["innodb_undo_tablespaces"] == "3"
    assert build_backup_my_cnf(parse_backup_my_cnf(cnf_raw), "mariadb") == cnf_raw
    bl_raw = fixture("mariadb-11.8-full-mariadb_backup_binlog_info")
    bl = parse_binlog_info(bl_raw)
    assert bl == BinlogInfo("binlog.000001", 325, "")
    assert build_binlog_info(bl, "mariadb") == bl_raw
    assert build_binlog_info(bl) == b"binlog.000001\t325\n"
