"""prepare of a MySQL 9.7 incremental chain: a base and three incrementals taken under the bank load with DDL
between backups (tools/soak_incremental.py). MySQL has no redo-only recovery we can prove, so its incrementals
start at the previous backup's start checkpoint and prepare lays the deltas over the base in order, then recovers
once with the last link's redo (docs/PREPARE.md, "Incremental chains"). The prepared chain must start, pass CHECK
TABLE and the bank invariant, and hold exactly what a full backup taken right after the last incremental holds.
test_page_changed_after_the_base_copied_it isolates the case that start checkpoint is for."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from innostream.formats.fil0fil import FIL_HEADER_SIZE, parse_fil_header
from innostream.formats.xtrabackup_meta import parse_checkpoints

from tools.sandbox import Server, start_server, table_checksums
from tools.soak_incremental import (
    INNOSTREAM,
    REPO,
    SESSION_OPTIONS,
    Chain,
    Verdict,
    build_chain,
    child_pids,
    ddl_step,
    our_backup,
    prepare_cmd,
    prepare_ours,
    prepare_reference,
    run,
    start_on,
    tree_digest,
    verify,
)

pytestmark = pytest.mark.mysql


@dataclass
class Built:
    chain: Chain
    binary: Path
    other_inc: Path  # an incremental of a later full backup of the same server: "another base"
    reference: Verdict


@pytest.fixture(scope="module")
def mysql_chain(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("mychain")
    srv: Server = start_server("mysql9", root / "src", options=SESSION_OPTIONS["mysql9"])
    try:
        # The base copied slowly: the checkpoint moves during it, so its to_lsn differs from its start_lsn.
        chain = build_chain(srv, root / "backups", 3, "ours", transfers=800, base_extra=["--throttle", "4"])
        our_backup(srv, root / "backups" / "other-base")
        ddl_step(srv, 4)
        our_backup(srv, root / "backups" / "other-inc", root / "backups" / "other-base")
    finally:
        srv.stop()
    ref = verify(prepare_reference(chain, root / "work", srv), "mysql9", root / "run-ref")
    assert not ref.checks
    return Built(chain, srv.server_binary, root / "backups" / "other-inc", ref)


class _Binary:
    def __init__(self, built: Built) -> None:
        self.server_binary = built.binary



def _prepare(target: Path, built: Built, *args: str) -> subprocess.CompletedProcess[str]:
    return prepare_cmd(target, built.binary, *args)


def _incs(*dirs: Path) -> list[str]:
    return [a for d in dirs for a in ("--incremental-dir", str(d))]


def test_mysql_chain_equals_full_backup(mysql_chain: Built, tmp_path: Path) -> None:
    chain = mysql_chain.chain
    cps = [parse_checkpoints((p / "xtrabackup_checkpoints").read_bytes()) for p in (chain.base, *chain.incs)]
    starts = [int(dict(cp.extra)["start_lsn"]) for cp in cps]
    assert len(set(starts)) == 4, starts  # the checkpoint moved between the backups: four distinct links
    assert cps[0].to_lsn > starts[0]  # and during the base's copy: from_lsn = to_lsn would miss pages
    for prev, cp in zip(starts, cps[1:], strict=False):
        assert cp.from_lsn == prev  # each starts at the previous backup's start checkpoint (not its to_lsn)
    assert any((inc / "bank" / "ledger.ibd.delta").stat().st_size > 16384 for inc in chain.incs)

    ours = verify(prepare_ours(chain, tmp_path, _Binary(mysql_chain)), "mysql9", tmp_path / "run-ours")
    assert ours.checks == []
    assert ours.transfers == chain.bank_transfers == mysql_chain.reference.transfers
    assert ours.contents == mysql_chain.reference.contents
    assert {"created_1", "created_2", "created_3", "keep", "rebuilt"} <= set(ours.contents["chain"])
    assert not {"dropped_1", "dropped_2", "dropped_3"} & set(ours.contents["chain"])


@pytest.mark.parametrize("case", ["missing-middle", "swapped", "other-base", "no-start-lsn"])
def test_mysql_broken_chain_refused_base_unchanged(mysql_chain: Built, tmp_path: Path, case: str) -> None:
    chain = mysql_chain.chain
    base = tmp_path / "base"
    shutil.copytree(chain.base, base)
    inc1, inc2, inc3 = chain.incs
    incs = {"missing-middle": [inc1, inc3], "swapped": [inc2, inc1, inc3], "other-base": [mysql_chain.other_inc],
            "no-start-lsn": [inc1]}[case]
    if case == "no-start-lsn":  # a base made by another tool (xtrabackup writes no start_lsn)
        cp = base / "xtrabackup_checkpoints"
        cp.write_text("".join(line for line in cp.read_text().splitlines(keepends=True)
                              if not line.startswith("start_lsn")))
    before = tree_digest(base)
    res = _prepare(base, mysql_chain, *_incs(*incs))
    assert res.returncode == 7, res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, res.stderr
    want = "has no start_lsn" if case == "no-start-lsn" else "broken chain"
    assert want in errors[0], errors[0]
    assert "nothing was changed" in errors[0]
    assert tree_digest(base) == before



def test_mysql_step_by_step_then_kill_9_in_recovery(mysql_chain: Built, tmp_path: Path) -> None:
    """xtrabackup's step form: --apply-log-only on the base and the first links lays them without recovery;
    the last step recovers. prepare killed -9 while its server recovers: a rerun of the same command completes,
    and once more does nothing."""
    chain = mysql_chain.chain
    base = tmp_path / "base"
    shutil.copytree(chain.base, base)
    inc1, inc2, inc3 = chain.incs
    res = _prepare(base, mysql_chain, "--apply-log-only")
    assert res.returncode == 0, res.stderr
    assert "not recovered yet" in res.stderr
    assert "backup_type = full-backuped" in (base / "xtrabackup_checkpoints").read_text()
    res = _prepare(base, mysql_chain, "--apply-log-only", *_incs(inc1))
    assert res.returncode == 0, res.stderr
    assert not (base / "#innodb_redo").exists()  # no server ran
    # the same step again: it was laid already, nothing to do; a step skipped back to (base's): refused
    res = _prepare(base, mysql_chain, "--apply-log-only", *_incs(inc1))
    assert res.returncode == 0, res.stderr
    assert "laid on" in res.stderr
    assert "already" in res.stderr
    before = tree_digest(base)
    res = _prepare(base, mysql_chain, "--apply-log-only", *_incs(inc3))
    assert res.returncode == 7, res.stderr
    assert "broken chain" in res.stderr
    assert tree_digest(base) == before

    argv = [*INNOSTREAM, "prepare", "--target-dir", str(base), "--server-binary", str(mysql_chain.binary),
            "--no-fsync", *_incs(inc2, inc3)]
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        server = next(iter(child_pids(proc.pid)), None)
        if server is not None and (base / "#innodb_redo").is_dir():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "prepare ended before it was killed"
    assert server is not None, "prepare never started its recovery server"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if Path(f"/proc/{server}").exists():
        status = Path(f"/proc/{server}/status").read_text()
        cmd = Path(f"/proc/{server}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        raise AssertionError(f"the recovery server outlived prepare: {cmd}\n{status}")
    res = run(argv)
    assert res.returncode == 0, res.stderr
    assert "backup_type = full-prepared" in (base / "xtrabackup_checkpoints").read_text()
    res = run(argv)
    assert res.returncode == 0, res.stderr
    assert "already prepared with this chain" in res.stderr
    got = verify(base, "mysql9", tmp_path / "run")
    assert got.checks == []
    assert got.contents == mysql_chain.reference.contents



# --- the case the start checkpoint is for --------------------------------------------------------------------------

_ROWS = 4000  # two 7000-byte rows a page: t.ibd (~40 MB) is bigger than mysql.ibd, so it is copied first
_UPDATED = "id % 400 = 7"  # one row on each of 10 pages spread over the table


def _copied(log_text: str, name: str) -> bool:
    """The backup's log says ``name`` was copied: ``[NN] Copying .../name to ...`` then ``[NN]        ...done``
    (other threads' and the redo copier's lines may come between)."""
    thread = None
    for line in log_text.splitlines():
        if thread is None:
            m = re.search(r"\[(\d+)\] Copying \S+/" + re.escape(name) + " to ", line)
            thread = m.group(1) if m else None
        elif f"[{thread}]        ...done" in line:
            return True
    return False


def _page_lsns(path: Path, page_size: int = 16384) -> list[int]:
    data = path.read_bytes()
    return [parse_fil_header(data[off:off + FIL_HEADER_SIZE]).lsn for off in range(0, len(data), page_size)]


def test_page_changed_after_the_base_copied_it(tmp_path: Path) -> None:
    """A page the base copied early, then changed and flushed before the base's end checkpoint (start_lsn < page
    LSN <= to_lsn) and never again. The chain never applies the base's redo, so the change reaches the prepared
    chain only because the incremental copies pages newer than the base's start_lsn; with the peers' from_lsn =
    to_lsn it would be lost (the test then fails on the UPDATE's rows). The base is copied slowly (--parallel 1
    --throttle 8, t.ibd first) and the UPDATE waits for t.ibd's copy. MySQL's checkpoint cannot pass a page
    still dirty, so innodb_max_dirty_pages_pct = 0 has the page cleaner write the pages at once: the checkpoint
    passed the UPDATE about 2 s after t.ibd's copy, with some 7 s of the base (~70 MB) still to copy; neither the
    backup's redo log consumer nor LOCK INSTANCE FOR BACKUP held it back."""
    srv = start_server("mysql9", tmp_path / "src", options=SESSION_OPTIONS["mysql9"])
    base, inc = tmp_path / "base", tmp_path / "inc"
    proc: subprocess.Popen[bytes] | None = None
    try:
        srv.execute_script(["CREATE DATABASE h", "SET SESSION cte_max_recursion_depth = 10000",
                            "CREATE TABLE h.t (id INT PRIMARY KEY, v VARCHAR(7000)) ENGINE=InnoDB",
                            "INSERT INTO h.t WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s "
                            f"WHERE n < {_ROWS - 1}) SELECT n, LEFT(REPEAT(CONCAT(n, '-'), 2000), 7000) FROM s"])
        srv.flush_dirty()
        live = srv.datadir / "h" / "t.ibd"
        log_file = tmp_path / "base.log"
        argv = [*INNOSTREAM, "backup", "--socket", str(srv.socket), "--user", "root", "--datadir",
                str(srv.datadir), "--target-dir", str(base), "--no-fsync", "--parallel", "1", "--throttle", "8"]
        with open(log_file, "wb") as err:
            proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        while not _copied(log_file.read_text(), "h/t.ibd"):
            assert proc.poll() is None, "the base ended before t.ibd was copied:\n" + log_file.read_text()[-3000:]
            time.sleep(0.05)

        srv.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")  # flush now, so the checkpoint can pass
        srv.execute(f"UPDATE h.t SET v = CONCAT('U', SUBSTRING(v, 2)) WHERE {_UPDATED}")  # in place
        changed_at = srv.status("Innodb_redo_log_current_lsn")
        while srv.status("Innodb_redo_log_checkpoint_lsn") < changed_at:
            assert proc.poll() is None, (f"the base ended before the checkpoint passed the UPDATE (LSN "
                                         f"{changed_at}):\n" + log_file.read_text()[-3000:])
            time.sleep(0.1)
        assert proc.wait(timeout=300) == 0, log_file.read_text()[-3000:]
        proc = None

        # The precondition, from the pages themselves: t's changed pages are newer than the base's start
        # checkpoint and not newer than its end checkpoint, and the base holds their older version.
        cp = parse_checkpoints((base / "xtrabackup_checkpoints").read_bytes())
        start = int(dict(cp.extra)["start_lsn"])
        assert start < changed_at <= cp.to_lsn, (start, changed_at, cp.to_lsn)
        live_lsns, base_lsns = _page_lsns(live), _page_lsns(base / "h" / "t.ibd")
        changed = [n for n, (a, b) in enumerate(zip(live_lsns, base_lsns, strict=True)) if a != b]
        assert len(changed) >= 10, changed  # the 10 rows' pages at least
        for n in changed:
            assert start < live_lsns[n] <= cp.to_lsn, (n, start, live_lsns[n], cp.to_lsn)
            assert base_lsns[n] <= start, (n, base_lsns[n], start)

        our_backup(srv, inc, base)  # nothing changed t since
        assert _page_lsns(live) == live_lsns  # the pages were never changed again: only start_lsn brings them
        want = table_checksums(srv, "h")
        updated = srv.query("SELECT id FROM h.t WHERE v LIKE 'U%' ORDER BY id")
        assert len(updated) == _ROWS // 400
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        srv.stop()

    res = prepare_cmd(base, srv.server_binary, "--incremental-dir", str(inc))
    assert res.returncode == 0, res.stderr
    got_srv = start_on(base, "mysql9", tmp_path / "run")
    try:
        got = table_checksums(got_srv, "h")
        got_updated = got_srv.query("SELECT id FROM h.t WHERE v LIKE 'U%' ORDER BY id")
    finally:
        got_srv.stop()
    assert got_updated == updated, f"the UPDATE made while the base was copied is lost: {got_updated}"
    assert got == want
