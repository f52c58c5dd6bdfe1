"""Secrets (issue 14): a password given on the command line is hidden from ``ps`` for the whole backup and warned
about; a world-writable option file is ignored with the MySQL clients' warning. Real servers, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from innostream.cli.backup import masked_argv

INNOSTREAM = [sys.executable, "-m", "innostream"]
REPO = Path(__file__).resolve().parent.parent
PASSWORD = "Hunter2-s3cret"


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def test_masked_argv_forms():
    pw = "abc"
    assert masked_argv(["x", "--password", "abc", "-u", "abc"], pw) == ["x", "--password", "xxx", "-u", "abc"]
    assert masked_argv(["--password=abc", "-pabc", "-p", "abc"], pw) == ["--password=xxx", "-pxxx", "-p", "xxx"]


def test_password_hidden_from_proc_cmdline_during_backup(mysql9, tmp_path):
    """``backup --stream --password VALUE`` into a reader that does not read yet: while the backup waits on the full
    pipe, /proc/PID/cmdline does not show the password; the backup still completes and warns."""
    mysql9.execute(f"CREATE USER IF NOT EXISTS 'bk_ps'@'localhost' IDENTIFIED BY '{PASSWORD}'")
    mysql9.execute("GRANT ALL ON *.* TO 'bk_ps'@'localhost'")
    proc = subprocess.Popen([*INNOSTREAM, "backup", "--socket", str(mysql9.socket), "--user", "bk_ps",
                             "--password", PASSWORD, "--datadir", str(mysql9.datadir), "--stream"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        assert proc.stdout is not None
        first = proc.stdout.read(1)  # the stream has started: options are parsed, the server is connected
        assert first
        time.sleep(0.5)  # the pipe fills; the backup waits for us
        assert proc.poll() is None, "the backup ended before its command line could be read"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline, cmdline
        assert b"backup" in cmdline
        assert b"--password" in cmdline
        rest = proc.stdout.read()
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.decode()
    assert proc.returncode == 0, stderr[-2000:]
    assert len(rest) > 100_000
    assert "Using a password on the command line interface can be insecure." in stderr
    assert PASSWORD not in stderr


def test_world_writable_option_file_is_ignored(mariadb10, tmp_path):
    """An option file anyone can write (mode 666) holding a wrong password is ignored with the clients' warning;
    the backup connects with the command line's options (root, no password)."""
    cnf = tmp_path / "my.cnf"
    cnf.write_text("[client]\npassword = not-the-password\nuser = nobody_here\n")
    cnf.chmod(0o666)
    target = tmp_path / "b"
    res = subprocess.run([*INNOSTREAM, "backup", "--defaults-file", str(cnf), "--socket", str(mariadb10.socket),
                          "--datadir", str(mariadb10.datadir), "--target-dir", str(target)],
                         capture_output=True, text=True, env={**_env(), "USER": "root"}, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"World-writable config file '{cnf}' is ignored." in res.stderr
    assert (target / "xtrabackup_checkpoints").is_file()
    # The same file, not world-writable, is read (and its wrong password refused by the server).
    cnf.chmod(0o600)
    bad = subprocess.run([*INNOSTREAM, "backup", "--defaults-file", str(cnf), "--socket", str(mariadb10.socket),
                          "--datadir", str(mariadb10.datadir), "--target-dir", str(tmp_path / "c")],
                         capture_output=True, text=True, env={**_env(), "USER": "root"}, timeout=300, check=False)
    assert bad.returncode == 4, bad.stderr[-2000:]
    assert "World-writable" not in bad.stderr
