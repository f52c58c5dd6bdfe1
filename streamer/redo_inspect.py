"""Describe a redo log: server files or backup copies of either family, for ``innostream inspect``.

Accepts MariaDB ``ib_logfile0`` (server log or mariabackup/innostream copy), a MySQL ``#innodb_redo`` directory (or a
datadir holding one), a single ``#ib_redoN`` file, and ``xtrabackup_logfile``. The result is a plain dict (JSON
ready): format, creator, uuid, header start LSN, both checkpoints and which one recovery would use, and the LSN
range of valid log found by scanning from the checkpoint, with the first invalid piece if the data stops early.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from innostream.errors import SourceError
from innostream.flavor import Flavor
from innostream.formats import log0files_io as my
from innostream.formats import mtr0log as ma
from innostream.formats.errors import BadMagic, FormatError
from innostream.redo_copier import pread_exact

SCAN_CHUNK = 1 << 20


def inspect_redo(path: Path) -> dict[str, Any]:
    """Inspect the redo log at ``path`` (file or directory); see the module docstring.

    Raises:
        SourceError: nothing redo-like at ``path``. FormatError: a header that cannot be parsed.
    """
    path = Path(path)
    if path.is_dir():
        if (path / my.LOG_DIRECTORY_NAME).is_dir():
            return _inspect_mysql_dir(path / my.LOG_DIRECTORY_NAME)
        if (path / "ib_logfile0").is_file():
            return inspect_redo(path / "ib_logfile0")  # MariaDB, or a pre-8.0.30 MySQL group
        if (path / "xtrabackup_logfile").is_file():
            return _inspect_mysql_file(path / "xtrabackup_logfile")
        if any(p.name.startswith(my.LOG_FILE_BASE_NAME) for p in path.iterdir()):
            return _inspect_mysql_dir(path)
        raise SourceError(f"no redo log in {path}", file=str(path))
    try:
        with path.open("rb") as fh:
            head = fh.read(my.OS_FILE_LOG_BLOCK_SIZE)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}", file=str(path)) from exc
    if len(head) >= 4 and struct.unpack_from(">I", head)[0] in (ma.FORMAT_10_8, ma.FORMAT_ENC_10_8, ma.FORMAT_10_5):
        return _inspect_mariadb(path)
    return _inspect_mysql_file(path)


# --- MariaDB ---------------------------------------------------------------------------------------------------------
def _inspect_mariadb(path: Path) -> dict[str, Any]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        prefix = pread_exact(fd, ma.START_OFFSET, 0, str(path))
        try:
            header = ma.parse_file_header(prefix)
        except FormatError as exc:
            exc.file = str(path)
            raise
        slots = ma.checkpoints(prefix, header.first_lsn)
        valid = [c for c in slots if c is not None]
        current = max(valid, key=lambda c: c.checkpoint_lsn) if valid else None
        copy = header.creator.startswith(ma.BACKUP_CREATOR_PREFIX)
        info: dict[str, Any] = {
            "path": str(path),
            "flavor": Flavor.MARIADB,
            "kind": "backup copy" if copy else "server log",
            "format": f"{header.format:#010x} (10.8{', encrypted' if header.encrypted else ''})",
            "creator": header.creator,
            "file_size": size,
            "capacity": ma.capacity(size),
            "first_lsn": header.first_lsn,
            "checkpoints": [
                {
                    "slot": i + 1,
                    "valid": c is not None,
                    **({"lsn": c.checkpoint_lsn, "end_lsn": c.end_lsn} if c else {}),
                }
                for i, c in enumerate(slots)
            ],
            "current_checkpoint": current.slot if current else None,
            "checkpoint_lsn": current.checkpoint_lsn if current else None,
            "start_lsn": None,
            "end_lsn": None,
            "mtrs": 0,
            "end_reason": None,
            "invalid": None,
        }
        if current is None or header.encrypted:
            info["end_reason"] = "no valid checkpoint" if current is None else "encrypted log not scanned"
            return info
        cap = ma.capacity(size)
        lsn = current.checkpoint_lsn
        info["start_lsn"] = lsn
        limit = lsn + cap if not copy else header.first_lsn + cap  # one lap; a copy ends at its file end
        window = SCAN_CHUNK
        reason = "end of file"
        while lsn < limit:
            n = min(window, limit - lsn)
            off = ma.lsn_to_offset(lsn, header.first_lsn, size)
            first = min(n, size - off)
            buf = pread_exact(fd, first, off, str(path))
            if first < n:
                buf += pread_exact(fd, n - first, ma.START_OFFSET, str(path))
            res = ma.scan_mtrs(buf, lsn, header.first_lsn, size)
            info["mtrs"] += len(res.terminators)
            lsn += res.end
            if res.status == 0:
                continue
            if res.status == ma.MTR_INCOMPLETE and (res.end or window < ma.MTR_SIZE_MAX * 2) and n == window:
                window = window if res.end else window * 2
                continue
            seq = ma.sequence_bit(lsn, header.first_lsn, size)
            reason = ma.describe_stop(buf, res.end, seq)
            break
        info["end_lsn"] = lsn
        info["end_reason"] = reason
        # A copy must be valid to its last byte; a server log at least up to its FILE_CHECKPOINT mtr.
        short = lsn < limit if copy else lsn < current.end_lsn + ma.SIZE_OF_FILE_CHECKPOINT
        if short:
            info["invalid"] = {
                "lsn": lsn,
                "offset": ma.lsn_to_offset(lsn, header.first_lsn, size),
                "reason": reason,
            }
        return info
    finally:
        os.close(fd)


# --- MySQL -----------------------------------------------------------------------------------------------------------
def _file_summary(path: Path, head: bytes, size: int) -> dict[str, Any]:
    hdr = my.parse_file_header(head, verify_checksum=False)
    slots = my.checkpoints(head) if len(head) >= my.LOG_FILE_HDR_SIZE else [None, None]
    return {
        "path": str(path),
        "format": hdr.format,
        "format_name": my.LogFormat(hdr.format).name,
        "creator": hdr.creator,
        "uuid": hdr.log_uuid,
        "flags": [f.name for f in my.LogHeaderFlags if hdr.flags & f],
        "header_checksum_ok": my.block_checksum_ok(head),
        "start_lsn": hdr.start_lsn,
        "end_lsn_capacity": my.file_end_lsn(hdr.start_lsn, size) if hdr.is_8_0_30 else None,
        "file_size": size,
        "checkpoints": [
            {"slot": i + 1, "valid": c is not None, **({"lsn": c.lsn} if c else {})} for i, c in enumerate(slots)
        ],
    }


def _scan_blocks(
    path: Path, fd: int, start_lsn: int, from_lsn: int, size: int
) -> tuple[int, str | None, dict[str, Any] | None]:
    """Scan blocks of one file from ``from_lsn`` (block aligned); return (end lsn, end reason, invalid info)."""
    lsn = from_lsn
    end = my.file_end_lsn(start_lsn, size)
    while lsn < end:
        n = min(SCAN_CHUNK, end - lsn)
        buf = pread_exact(fd, n, my.lsn_to_offset(start_lsn, lsn), str(path))
        for off in range(0, n, my.OS_FILE_LOG_BLOCK_SIZE):
            status, data_len = my.check_block(buf, lsn + off, off)
            if status is my.BlockStatus.VALID:
                if data_len < my.OS_FILE_LOG_BLOCK_SIZE:
                    return lsn + off + data_len, "partial block (end of log)", None
                continue
            where = {"lsn": lsn + off, "offset": my.lsn_to_offset(start_lsn, lsn + off), "file": str(path)}
            if status is my.BlockStatus.OLD:
                return lsn + off, "older block (end of log)", None
            if status is my.BlockStatus.EMPTY:
                return lsn + off, "never written block (end of log)", None
            if status is my.BlockStatus.AHEAD:
                return lsn + off, "block numbered ahead", {**where, "reason": "block number ahead of its position"}
            return lsn + off, "checksum mismatch", {**where, "reason": "block checksum mismatch"}
        lsn += n
    return lsn, None, None


def _inspect_mysql_file(path: Path) -> dict[str, Any]:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, my.LOG_FILE_HDR_SIZE, 0)
        try:
            info = _file_summary(path, head, size)
        except BadMagic as exc:
            raise SourceError(f"{path} is not a redo log: {exc.message}", file=str(path)) from exc
        hdr = my.parse_file_header(head, verify_checksum=False)
        copy = path.name == "xtrabackup_logfile" or hdr.creator.startswith(my.LOG_HEADER_CREATOR_PXB.strip())
        info.update(flavor=Flavor.MYSQL, kind="backup copy" if copy else "server file")
        if path.name.endswith(my.LOG_FILE_UNUSED_SUFFIX):
            info["kind"] = "unused spare file (_tmp): its content is stale"
        cps = [c for c in my.checkpoints(head) if c is not None] if len(head) >= my.LOG_FILE_HDR_SIZE else []
        current = max(cps, key=lambda c: c.lsn if hdr.is_8_0_30 else c.checkpoint_no) if cps else None
        info["current_checkpoint"] = current.slot if current else None
        info["checkpoint_lsn"] = current.lsn if current else None
        if not hdr.is_8_0_30:
            info.update(end_lsn=None, end_reason="pre-8.0.30 log group: not scanned", invalid=None)
            return info
        # A copy starts at its header's start_lsn (we and PXB's prepare set it to the first block's LSN); a server
        # file is scanned from its checkpoint if it holds one (older blocks may be recycled garbage), else its start.
        base = hdr.start_lsn
        if copy and current is not None:
            base = my.align_down(current.lsn)  # PXB leaves the server file's START_LSN here until prepare
        start = base
        if not copy and current is not None and my.file_contains(hdr.start_lsn, size, current.lsn):
            start = my.align_down(current.lsn)
        end, reason, invalid = _scan_blocks(path, fd, base, start, size)
        info.update(scan_start_lsn=start, end_lsn=end, end_reason=reason or "end of file", invalid=invalid)
        return info
    finally:
        os.close(fd)


def _inspect_mysql_dir(redo_dir: Path) -> dict[str, Any]:
    files = []
    live = []
    for p in sorted(redo_dir.iterdir(), key=lambda p: p.name):
        if not p.name.startswith(my.LOG_FILE_BASE_NAME):
            continue
        with p.open("rb") as fh:
            head = fh.read(my.LOG_FILE_HDR_SIZE)
        size = p.stat().st_size
        try:
            summary = _file_summary(p, head, size)
        except FormatError as exc:
            files.append({"path": str(p), "error": str(exc)})
            continue
        summary["unused"] = p.name.endswith(my.LOG_FILE_UNUSED_SUFFIX)
        files.append(summary)
        if not summary["unused"] and summary["header_checksum_ok"]:
            live.append((summary, head, size))
    live.sort(key=lambda t: t[0]["start_lsn"])
    best = None
    for summary, head, size in live:
        cp = my.find_checkpoint(head, size)
        if cp is not None and (best is None or cp.lsn > best[0]):
            best = (cp.lsn, summary["path"], cp.slot)
    info: dict[str, Any] = {
        "path": str(redo_dir),
        "flavor": Flavor.MYSQL,
        "kind": "server log",
        "format": live[0][0]["format"] if live else None,
        "creator": live[0][0]["creator"] if live else None,
        "uuid": live[0][0]["uuid"] if live else None,
        "files": files,
        "checkpoint_lsn": best[0] if best else None,
        "checkpoint_file": best[1] if best else None,
        "current_checkpoint": best[2] if best else None,
        "start_lsn": None,
        "end_lsn": None,
        "end_reason": None,
        "invalid": None,
    }
    if best is None:
        info["end_reason"] = "no valid checkpoint"
        return info
    lsn = my.align_down(best[0])
    info["start_lsn"] = lsn
    reason = None
    for summary, _head, size in live:
        if summary["end_lsn_capacity"] <= lsn:
            continue
        if summary["start_lsn"] > lsn:
            info["invalid"] = {"lsn": lsn, "reason": f"no file holds lsn {lsn}"}
            break
        fd = os.open(summary["path"], os.O_RDONLY)
        try:
            lsn, reason, invalid = _scan_blocks(Path(summary["path"]), fd, summary["start_lsn"], lsn, size)
        finally:
            os.close(fd)
        if reason is not None:
            info["invalid"] = invalid
            break
    info["end_lsn"] = lsn
    info["end_reason"] = reason or "end of the last file"
    return info
