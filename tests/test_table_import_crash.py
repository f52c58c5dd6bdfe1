"""An imported table survives a crash of the live server right after ``innostream import`` (MariaDB 10.11, 11.8).

Seen on MariaDB 10.11: when the imported tablespace is renamed (``--replace``'s RENAME TABLE, the EXCHANGE
PARTITION a partitioned import needs) and the server is killed before its next checkpoint, recovery replays the
redo of the table's CREATE onto the imported file and the table comes back empty. Import waits for a checkpoint
past the import before renaming (table_import.checkpoint_after_import); here the server is SIGKILLed right after
both kinds of import and must come back with every row.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FreshServer
from tests.test_table_import import cli, import_cli


@pytest.mark.parametrize("kind", ["mariadb10", "mariadb11"])
def test_imports_that_rename_survive_a_crash(kind: str, fresh_server: FreshServer, tmp_path: Path) -> None:
    srv = fresh_server(kind, sample=True)
    backup = tmp_path / "b"
    assert cli("backup", "--socket", str(srv.socket), "--user", "root", "--target-dir", str(backup),
               "--no-fsync").returncode == 0
    assert cli("prepare", "--export", "--target-dir", str(backup), "--server-binary", str(srv.server_binary),
               "--no-fsync").returncode == 0
    want = dict(srv.query("CHECKSUM TABLE sample.t_plain, sample.t_partitioned"))
    srv.execute("DELETE FROM sample.t_plain WHERE id > 5")
    assert import_cli(srv, backup, "--table", "sample.t_plain", "--replace").returncode == 0
    srv.execute("DROP TABLE sample.t_partitioned")
    assert import_cli(srv, backup, "--table", "sample.t_partitioned").returncode == 0
    assert srv.query("SELECT @@innodb_max_dirty_pages_pct")[0][0] == 90  # the server's setting is back
    srv.kill()
    srv.start_again()
    assert dict(srv.query("CHECKSUM TABLE sample.t_plain, sample.t_partitioned")) == want
