"""The metadata files a backup ends with (xtrabackup_binlog_info, backup-my.cnf, xtrabackup_info,
xtrabackup_checkpoints), built from the server's facts and the LSNs of the run, in the reference tools' formats
(:mod:`innostream.formats.xtrabackup_meta`). Pure values in, bytes out: the engine decides when to write them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from innostream import __version__
from innostream.flavor import Flavor
from innostream.formats import xtrabackup_meta as meta

if TYPE_CHECKING:
    from innostream.connection import ServerFacts


def build_metadata(facts: ServerFacts, *, my_cnf: bytes, to_lsn: int, last_lsn: int, flushed_lsn: int,
                   binlog: meta.BinlogInfo | None, lock_seconds: float, started: datetime, ended: datetime,
                   argv: Sequence[str], stream_format: str | None, compressed: bool,
                   server_uuid: str, from_lsn: int = 0, source_uuid: str | None = None,
                   partial: bool = False, start_lsn: int = 0) -> dict[str, bytes]:
    """The metadata files, in the order they are written (checkpoints last: the commit point).

    Args:
        my_cnf: backup-my.cnf, which depends on the server family.
        to_lsn: the server's checkpoint at the end of the backup; ``last_lsn``: where the redo copy ends.
        flushed_lsn: MySQL's flushed LSN at the end (MariaDB's checkpoints file has none).
        argv: the command line for ``tool_command`` (passwords are masked here).
        stream_format: None for a directory backup, else the stream's format.
        server_uuid: this backup's own uuid (``uuid``, as the reference tools write it).
        from_lsn: an incremental backup's base LSN (0: a full backup).
        source_uuid: the server's ``@@server_uuid`` (MySQL), written as ``server_uuid`` so a later incremental
            can check that its base comes from the same server.
        start_lsn: the checkpoint the redo copy starts at. MySQL backups record it in xtrabackup_checkpoints
            (``start_lsn``, a key the tools' readers skip): the next incremental copies the pages newer than it,
            which is what lets a MySQL chain be prepared by laying the deltas over each other (docs/PREPARE.md).
    """
    flavor = facts.flavor
    files: dict[str, bytes] = {}
    binlog_pos = ""
    if binlog is not None:
        files[meta.XTRABACKUP_BINLOG_INFO] = meta.build_binlog_info(binlog, flavor)
        binlog_pos = meta.format_binlog_pos(binlog.filename, binlog.position, binlog.gtid)
    files[meta.BACKUP_MY_CNF] = my_cnf
    info: dict[str, object] = {
        "uuid": server_uuid,
        "name": "",
        "tool_name": "innostream",
        "tool_command": meta.tool_command(argv),
        "tool_version": __version__,
        "ibbackup_version": __version__,
        "server_version": facts.version,
        "start_time": started.strftime(meta.INFO_TIME_FORMAT),
        "end_time": ended.strftime(meta.INFO_TIME_FORMAT),
        "lock_time": round(lock_seconds),
        "binlog_pos": binlog_pos,
        "innodb_from_lsn": from_lsn,
        "innodb_to_lsn": to_lsn,
        "partial": "Y" if partial else "N",  # only the selected user tables (innostream.selection)
        "incremental": "Y" if from_lsn else "N",
        "format": "file" if stream_format is None else ("xbstream" if stream_format == "xbstream" else "innostream"),
        "compressed": "compressed" if compressed and stream_format is not None else "N",
    }
    if flavor == Flavor.MYSQL:
        info["encrypted"] = "N"
    if source_uuid:
        info["server_uuid"] = source_uuid
    files[meta.XTRABACKUP_INFO] = meta.build_info(info, flavor)
    checkpoints = meta.Checkpoints(
        backup_type=meta.BACKUP_TYPE_INCREMENTAL if from_lsn else meta.BACKUP_TYPE_FULL,
        from_lsn=from_lsn,
        to_lsn=to_lsn,
        last_lsn=last_lsn,
        flushed_lsn=flushed_lsn if flavor == Flavor.MYSQL else 0,
        extra=(("start_lsn", str(start_lsn)),) if flavor == Flavor.MYSQL and start_lsn else (),
    )
    files[meta.XTRABACKUP_CHECKPOINTS] = meta.build_checkpoints(checkpoints, flavor)
    return files
