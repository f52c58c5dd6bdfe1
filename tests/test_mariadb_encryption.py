"""MariaDB data-at-rest encryption (issue 14): ``innostream prepare`` loads the key management plugin named in
backup-my.cnf by itself (as ``mariadb-backup --prepare`` does), and a server that encrypts its redo log is refused
before anything is copied, with one line naming innodb_encrypt_log. Real MariaDB 10.11 servers with
file_key_management and a key file made here."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from tools.sandbox import start_server

INNOSTREAM = [sys.executable, "-m", "innostream"]
REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _plugin_options(tmp_path: Path) -> list[str]:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"1;{secrets.token_hex(32)}\n2;{secrets.token_hex(32)}\n")
    return ["--plugin-load-add=file_key_management", f"--file-key-management-filename={keys}",
            "--file-key-management-encryption-algorithm=aes_ctr"]


def _backup(srv, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*INNOSTREAM, "backup", "--socket", str(srv.socket), "--user", "root", "--datadir",
                           str(srv.datadir), "--target-dir", str(target)], capture_output=True, text=True,
                          env=_env(), timeout=300, check=False)


def test_prepare_loads_the_key_plugin_from_backup_my_cnf(fresh_server, tmp_path):
    """innodb_encrypt_tables=ON: every table encrypted. ``innostream prepare`` is given no plugin option and
    succeeds; the server started on the result has the same table checksums."""
    plugin = _plugin_options(tmp_path)
    srv = fresh_server("mariadb10", options=[*plugin, "--innodb-encrypt-tables=ON"])
    srv.execute_script([
        "CREATE DATABASE e",
        "CREATE TABLE e.t (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB",
        "INSERT INTO e.t SELECT seq, REPEAT(CONCAT('secret', seq), 20) FROM e.seq_1_to_5000",
        "CREATE TABLE e.k (id INT PRIMARY KEY, n INT, KEY (n)) ENGINE=InnoDB ENCRYPTION_KEY_ID=2",
        "INSERT INTO e.k SELECT seq, seq * 7 FROM e.seq_1_to_3000",
    ])
    source = {t: srv.query(f"CHECKSUM TABLE e.{t}")[0][1] for t in ("t", "k")}
    target = tmp_path / "b"
    res = _backup(srv, target)
    assert res.returncode == 0, res.stderr[-2000:]
    prep = subprocess.run([*INNOSTREAM, "prepare", "--target-dir", str(target), "--server-binary",
                           str(srv.server_binary)], capture_output=True, text=True, timeout=600, env=_env(),
                          check=False)
    assert prep.returncode == 0, prep.stderr[-3000:]
    restored = start_server("mariadb10", tmp_path / "restored", datadir=target, initialize=False, options=plugin)
    try:
        restored_sums = {t: restored.query(f"CHECKSUM TABLE e.{t}")[0][1] for t in ("t", "k")}
        encrypted = restored.query("SELECT COUNT(*) FROM information_schema.INNODB_TABLESPACES_ENCRYPTION "
                                   "WHERE NAME IN ('e/t', 'e/k') AND ENCRYPTION_SCHEME = 1")[0][0]
    finally:
        restored.stop()
    assert restored_sums == source
    assert encrypted == 2


def test_encrypted_redo_log_is_refused_up_front(fresh_server, tmp_path):
    """innodb_encrypt_log=ON: exit 4 and one line naming innodb_encrypt_log, before anything is written (before:
    exit 3, 'not a MariaDB 10.8+ redo log (format word 0xf09f979d)')."""
    srv = fresh_server("mariadb10", options=[*_plugin_options(tmp_path), "--innodb-encrypt-log=ON"])
    target = tmp_path / "b"
    res = _backup(srv, target)
    assert res.returncode == 4, res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("innostream: error:")]
    assert len(errors) == 1
    assert "innodb_encrypt_log" in errors[0]
    assert not target.exists() or not any(target.iterdir())
    srv.execute("CREATE DATABASE after_refusal")  # nothing left locked
