"""The redo copy goes into the stream while the data files are copied (issue 13), not appended after them.

A streamed backup (MariaDB 10.11 and MySQL 9.7, where the end of the redo copy is cut and rewritten) runs for
several seconds (``--throttle``) under the bank-transfer load: most of the redo it copies must have left in the
stream before the end (what the spool still held at the end is logged and is far below the redo copied), and
the restored backup must hold a state of the bank that some prefix of the committed transfers produces.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.restored import prepared_and_started
from tools.load import BankLoad

REPO = Path(__file__).resolve().parents[1]
LEFT_RE = re.compile(r"Redo spool: (\d+) of (\d+) bytes of redo were left for the end of the stream")


@pytest.mark.parametrize("kind", ["mariadb10", "mysql9"])
def test_redo_streams_while_data_is_copied(kind: str, fresh_server, tmp_path: Path) -> None:
    srv = fresh_server(kind, sample=True)
    srv.execute_script(["CREATE DATABASE filler",
                        "CREATE TABLE filler.f (id INT AUTO_INCREMENT PRIMARY KEY, v VARBINARY(1000))",
                        "INSERT INTO filler.f (v) VALUES (RANDOM_BYTES(900))",
                        *["INSERT INTO filler.f (v) SELECT RANDOM_BYTES(900) FROM filler.f"] * 14])
    # No wait for the bulk load's pages to be written: on MariaDB the filler's page 0 is often still unwritten when
    # the copy starts and written during it (tests/test_page_zero_bulk.py; this once failed the backup).
    bank = BankLoad(srv, max_transfers=None, max_seconds=600, pad=900)
    bank.setup()
    archive, log_path = tmp_path / "backup.zst", tmp_path / "backup.log"
    with bank, open(archive, "wb") as out, open(log_path, "wb") as err:
        bank.wait_for(50)
        res = subprocess.run([sys.executable, "-m", "innostream", "backup", "--stream", "--socket", str(srv.socket),
                              "--user", "root", "--throttle", "8", "--parallel", "1"], stdout=out, stderr=err,
                             cwd=REPO, timeout=600, check=False)
    text = log_path.read_text(errors="replace")
    assert res.returncode == 0, text[-3000:]
    m = LEFT_RE.search(text)
    assert m, text[-3000:]
    left, total = int(m.group(1)), int(m.group(2))
    assert total > 1 << 20, f"only {total} bytes of redo: the load did not run during the copy"
    assert left < total // 4, f"{left} of {total} bytes of redo waited for the end: not interleaved"

    backup = tmp_path / "backup"
    ext = subprocess.run([sys.executable, "-m", "innostream", "extract", "-C", str(backup), str(archive)],
                         capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    assert ext.returncode == 0, ext.stderr[-3000:]
    srv.stop()
    with prepared_and_started(srv, backup, tmp_path) as restored:
        conn = restored.connect()
        try:
            assert bank.check(conn) >= 50
        finally:
            conn.close()
