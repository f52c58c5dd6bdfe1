"""What the families share: the common part of ``backup-my.cnf`` and the read size for redo copies."""

from __future__ import annotations

from innostream.connection import ServerFacts
from innostream.datadir import local_data_file_path

#: Bytes read at a time when validating and copying a redo copy (a multiple of 512): bounded memory for any size.
REDO_CHUNK = 8 * 1024 * 1024


def common_my_cnf(facts: ServerFacts, *, log_file_size: str, undo_files: int) -> dict[str, object]:
    """The ``backup-my.cnf`` options both families write (innodb-formats.md 6.2 / 6.4)."""
    v = facts.var
    return {
        "innodb_checksum_algorithm": v("innodb_checksum_algorithm", "crc32"),
        "innodb_data_file_path": local_data_file_path(v("innodb_data_file_path", "ibdata1:12M:autoextend")),
        "innodb_log_file_size": log_file_size or "0",
        "innodb_page_size": v("innodb_page_size", "16384"),
        # Undo tablespaces are copied to the backup root.
        "innodb_undo_directory": "./",
        "innodb_undo_tablespaces": v("innodb_undo_tablespaces") or str(undo_files),
    }
