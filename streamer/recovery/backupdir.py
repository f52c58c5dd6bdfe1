"""A backup directory as prepare and restore see it: its metadata files and the family that made it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from innostream.errors import PrepareError
from innostream.families import FAMILIES
from innostream.flavor import Flavor
from innostream.formats.errors import FormatError
from innostream.formats.xtrabackup_meta import (
    BACKUP_MY_CNF,
    MB_CHECKPOINTS,
    MB_INFO,
    XTRABACKUP_CHECKPOINTS,
    XTRABACKUP_INFO,
    Checkpoints,
    build_checkpoints,
    parse_backup_my_cnf,
    parse_checkpoints,
    parse_info,
)
from innostream.target import replace_file, sync_tree

#: In a base while an incremental chain is being applied to it: which link and how far (recovery/chain.py).
CHAIN_JOURNAL = "innostream_chain_journal"


@dataclass
class BackupDir:
    """The facts prepare and restore need from a backup directory's metadata files."""

    path: Path
    checkpoints_file: Path
    checkpoints: Checkpoints
    flavor: Flavor
    info: dict[str, str]
    my_cnf: dict[str, str]

    def write_checkpoints(self, cp: Checkpoints, *, fsync: bool = True) -> None:
        """Replace the checkpoints file atomically (a crash leaves the old or the new one, never half of one).

        With ``fsync`` (the default) every directory of the backup is synced first (the server that ran recovery
        made and renamed files in them), then the new file is committed by a synced rename
        (:func:`innostream.target.replace_file`)."""
        if fsync:
            sync_tree(self.path)
        replace_file(self.checkpoints_file, build_checkpoints(cp, self.flavor), fsync=fsync)


def read_backup_dir(target: Path) -> BackupDir:
    """Read and check a backup directory's metadata. Raises PrepareError if it is not a complete backup."""
    if not target.is_dir():
        raise PrepareError(f"backup directory {target} does not exist")
    cp_file = next((target / n for n in (XTRABACKUP_CHECKPOINTS, MB_CHECKPOINTS) if (target / n).is_file()), None)
    if cp_file is None:
        raise PrepareError(f"{target} has no {XTRABACKUP_CHECKPOINTS}: not a backup, or the backup did not finish",
                           hint="the metadata files are written last, when a backup completes")
    try:
        cp = parse_checkpoints(cp_file.read_bytes(), file=str(cp_file))
    except FormatError as exc:
        raise PrepareError(f"cannot read backup metadata: {exc}") from None
    info_file = next((target / n for n in (XTRABACKUP_INFO, MB_INFO) if (target / n).is_file()), None)
    info = parse_info(info_file.read_bytes(), file=str(info_file)) if info_file else {}
    cnf = target / BACKUP_MY_CNF
    my_cnf = parse_backup_my_cnf(cnf.read_bytes(), file=str(cnf)) if cnf.is_file() else {}
    flavor = next((f.flavor for f in FAMILIES if f.holds_redo_copy(target)), None)
    if flavor is None and Flavor.of_version(info.get("server_version", "")) is Flavor.MARIADB:
        flavor = Flavor.MARIADB
    if flavor is None:
        copies = " or ".join(f.redo_copy_name for f in FAMILIES)
        raise PrepareError(f"{target} holds no redo log copy ({copies})", hint="the backup is incomplete")
    return BackupDir(target, cp_file, cp, flavor, info, my_cnf)
