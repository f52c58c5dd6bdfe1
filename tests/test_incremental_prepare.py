"""prepare of an incremental chain on real servers: a base and incrementals taken under the bank load with DDL
between backups (tools/soak_incremental.py builds them). The prepared chain must start, pass CHECK TABLE and the
bank invariant, and hold exactly what a full backup taken right after the last incremental holds, and what real
``mariadb-backup --prepare --incremental-dir`` makes of the same chain.

MariaDB 10.11: our own incrementals (interop: mariadb-backup prepares our chain); a broken chain is refused with
exit 7 and BASE unchanged; the step form (--apply-log-only); a kill -9 in the middle. MariaDB 11.8: incrementals
made by real mariadb-backup on our base. MySQL 9.7: tests/test_incremental_prepare_mysql.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.sandbox import Server, start_server
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
    prepare_tool,
    run,
    tree_digest,
    verify,
)


@dataclass
class Built:
    chain: Chain
    binary: Path
    tool: Path
    other_base: Path  # a later full backup of the same server and an incremental of it: "another base"
    other_inc: Path
    reference: Verdict


@pytest.fixture(scope="module")
def mariadb_chain(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("chain")
    srv: Server = start_server("mariadb10", root / "src", options=SESSION_OPTIONS["mariadb10"])
    try:
        chain = build_chain(srv, root / "backups", 2, "ours", transfers=800)
        our_backup(srv, root / "backups" / "other-base")
        ddl_step(srv, 3)
        our_backup(srv, root / "backups" / "other-inc", root / "backups" / "other-base")
    finally:
        srv.stop()
    assert srv.backup_tool is not None
    ref = verify(prepare_reference(chain, root / "work", srv), "mariadb10", root / "run-ref")
    assert not ref.checks
    return Built(chain, srv.server_binary, srv.backup_tool, root / "backups" / "other-base",
                 root / "backups" / "other-inc", ref)


class _Binary:
    def __init__(self, built: Built) -> None:
        self.server_binary = built.binary
        self.backup_tool = built.tool



def _prepare(target: Path, built: Built, *args: str) -> subprocess.CompletedProcess[str]:
    return prepare_cmd(target, built.binary, *args)


@pytest.mark.mariadb
def test_chain_equals_full_backup_and_mariadb_backup(mariadb_chain: Built, tmp_path: Path) -> None:
    built = mariadb_chain
    chain = built.chain
    # the deltas really carry pages (not only redo): the checkpoint moved between the backups
    lsns = [(p / "xtrabackup_checkpoints").read_text() for p in (chain.base, *chain.incs)]
    assert len({line for t in lsns for line in t.splitlines() if line.startswith("to_lsn")}) == 3, lsns
    assert any((inc / "bank" / "ledger.ibd.delta").stat().st_size > 16384 for inc in chain.incs)

    ours = verify(prepare_ours(chain, tmp_path, _Binary(built)), "mariadb10", tmp_path / "run-ours")
    assert ours.checks == []
    assert ours.transfers == chain.bank_transfers == built.reference.transfers
    assert ours.contents == built.reference.contents
    assert {"created_1", "created_2", "keep", "rebuilt"} <= set(ours.contents["chain"])
    assert not {"dropped_1", "dropped_2"} & set(ours.contents["chain"])
    # the base and the incrementals are never changed by prepare (it works on copies here, and reads these)
    assert not (chain.base / "innostream_chain_journal").exists()

    tool = verify(prepare_tool(chain, tmp_path, _Binary(built)), "mariadb10", tmp_path / "run-tool",
                  direct=True)
    assert tool.checks == []
    assert tool.contents == ours.contents


@pytest.mark.mariadb
@pytest.mark.parametrize("case", ["missing-middle", "swapped", "repeated", "other-base", "incremental-as-base"])
def test_broken_chain_refused_base_unchanged(mariadb_chain: Built, tmp_path: Path, case: str) -> None:
    chain = mariadb_chain.chain
    base = tmp_path / "base"
    shutil.copytree(chain.base, base)
    inc1, inc2 = chain.incs
    incs = {"missing-middle": [inc2], "swapped": [inc2, inc1], "repeated": [inc1, inc1],
            "other-base": [mariadb_chain.other_inc], "incremental-as-base": [inc2]}[case]
    if case == "incremental-as-base":
        shutil.rmtree(base)
        shutil.copytree(inc1, base)
    before = tree_digest(base)
    res = _prepare(base, mariadb_chain, *[a for inc in incs for a in ("--incremental-dir", str(inc))])
    assert res.returncode == 7, res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, res.stderr
    want = {"missing-middle": "broken chain", "swapped": "broken chain", "repeated": "given twice",
            "other-base": "broken chain", "incremental-as-base": "is an incremental backup"}[case]
    assert want in errors[0]
    assert tree_digest(base) == before


@pytest.mark.mariadb
def test_damaged_delta_refused_base_unchanged(mariadb_chain: Built, tmp_path: Path) -> None:
    chain = mariadb_chain.chain
    base, inc1 = tmp_path / "base", tmp_path / "inc1"
    shutil.copytree(chain.base, base)
    shutil.copytree(chain.incs[0], inc1)
    delta = inc1 / "bank" / "ledger.ibd.delta"
    os.truncate(delta, delta.stat().st_size - 100)
    before = tree_digest(base)
    res = _prepare(base, mariadb_chain, "--incremental-dir", str(inc1), "--incremental-dir", str(chain.incs[1]))
    assert res.returncode == 7, res.stderr
    assert "damaged incremental" in res.stderr
    assert "ledger.ibd.delta" in res.stderr
    assert tree_digest(base) == before


@pytest.mark.mariadb
def test_page_newer_than_the_redo_is_refused(mariadb_chain: Built, tmp_path: Path) -> None:
    """The proof after a redo-only pass: a page with an LSN past the link's redo (here planted in an unused page
    of a table the redo does not touch; a write of the server's own would look the same) is named, exit 7."""
    chain = mariadb_chain.chain
    base = tmp_path / "base"
    shutil.copytree(chain.base, base)
    ibd = base / "chain" / "keep.ibd"
    data = ibd.read_bytes()
    page_no = next(n for n in range(len(data) // 16384 - 1, 0, -1) if not any(data[n * 16384:(n + 1) * 16384]))
    last_lsn = int(next(line.split("=")[1] for line in (base / "xtrabackup_checkpoints").read_text().splitlines()
                        if line.startswith("last_lsn")))
    with open(ibd, "r+b") as fh:
        fh.seek(page_no * 16384 + 16)
        fh.write((last_lsn + 1000).to_bytes(8, "big"))
    res = _prepare(base, mariadb_chain, "--apply-log-only")
    assert res.returncode == 7, res.stderr
    assert f"page {page_no} of {ibd} has LSN {last_lsn + 1000}, past the redo applied" in res.stderr
    assert "backup_type = full-backuped" in (base / "xtrabackup_checkpoints").read_text()


@pytest.mark.mariadb
def test_step_by_step_apply_log_only(mariadb_chain: Built, tmp_path: Path) -> None:
    chain = mariadb_chain.chain
    base = tmp_path / "base"
    shutil.copytree(chain.base, base)
    inc1, inc2 = chain.incs
    res = _prepare(base, mariadb_chain, "--apply-log-only")
    assert res.returncode == 0, res.stderr
    assert "backup_type = log-applied" in (base / "xtrabackup_checkpoints").read_text()
    res = _prepare(base, mariadb_chain, "--apply-log-only", "--incremental-dir", str(inc1))
    assert res.returncode == 0, res.stderr
    # the same step again, or a step skipped back to: refused, nothing changed
    before = tree_digest(base)
    res = _prepare(base, mariadb_chain, "--apply-log-only", "--incremental-dir", str(inc1))
    assert res.returncode == 7, res.stderr
    assert "broken chain" in res.stderr, res.stderr
    assert tree_digest(base) == before
    res = _prepare(base, mariadb_chain, "--incremental-dir", str(inc2))
    assert res.returncode == 0, res.stderr
    assert "backup_type = full-prepared" in (base / "xtrabackup_checkpoints").read_text()
    got = verify(base, "mariadb10", tmp_path / "run")
    assert got.checks == []
    assert got.contents == mariadb_chain.reference.contents
    # the last step again: nothing to do; fully prepared, no other incremental can follow
    res = _prepare(base, mariadb_chain, "--incremental-dir", str(inc2))
    assert res.returncode == 0, res.stderr
    assert "already prepared with this chain" in res.stderr
    res = _prepare(base, mariadb_chain, "--incremental-dir", str(inc1))
    assert res.returncode == 7, res.stderr
    assert "already fully prepared" in res.stderr, res.stderr



@pytest.mark.mariadb
def test_kill_9_mid_chain_then_rerun(mariadb_chain: Built, tmp_path: Path) -> None:
    """kill -9 of prepare while the server recovers the first incremental: the server dies with it (as in a crash
    of the machine); the journal names the link; a plain prepare is refused, the same command completes."""
    chain = mariadb_chain.chain
    base = tmp_path / "base"
    shutil.copytree(chain.base, base)
    args = [a for inc in chain.incs for a in ("--incremental-dir", str(inc))]
    argv = [*INNOSTREAM, "prepare", "--target-dir", str(base), "--server-binary", str(mariadb_chain.binary),
            "--no-fsync", *args]
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    journal = base / "innostream_chain_journal"
    deadline = time.monotonic() + 300
    server = None
    while time.monotonic() < deadline and proc.poll() is None:
        text = journal.read_text() if journal.exists() else ""
        if f"link = {chain.incs[0]}" in text and "phase = recover" in text:
            server = next(iter(child_pids(proc.pid)), None)
            if server is not None:
                break
        time.sleep(0.05)
    assert proc.poll() is None
    assert server is not None, "prepare never reached the first incremental's recovery"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while Path(f"/proc/{server}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{server}").exists(), "the recovery server outlived prepare"
    assert journal.exists()

    res = _prepare(base, mariadb_chain)
    assert res.returncode == 7, res.stderr
    assert "did not finish" in res.stderr, res.stderr
    res = _prepare(base, mariadb_chain, "--incremental-dir", str(chain.incs[1]))
    assert res.returncode == 7, res.stderr
    assert "stopped while applying" in res.stderr, res.stderr
    res = run(argv)
    assert res.returncode == 0, res.stderr
    assert "resuming the recovery" in res.stderr
    assert not journal.exists()
    res = run(argv)  # the same command once more: nothing to do
    assert res.returncode == 0, res.stderr
    assert "already prepared with this chain" in res.stderr
    got = verify(base, "mariadb10", tmp_path / "run")
    assert got.checks == []
    assert got.contents == mariadb_chain.reference.contents


@pytest.mark.mariadb11
def test_mariadb11_chain_of_mariadb_backup_incrementals(tmp_path: Path) -> None:
    """MariaDB 11.8: our base, incrementals by real mariadb-backup 11.8 (whole ``.new`` tablespaces among the
    deltas); ours, a full backup right after, and mariadb-backup's own prepare of the chain agree."""
    srv = start_server("mariadb11", tmp_path / "src", options=SESSION_OPTIONS["mariadb11"])
    try:
        chain = build_chain(srv, tmp_path / "backups", 2, "tool", transfers=600)
    finally:
        srv.stop()
    ref = verify(prepare_reference(chain, tmp_path, srv), "mariadb11", tmp_path / "run-ref")
    ours = verify(prepare_ours(chain, tmp_path, srv), "mariadb11", tmp_path / "run-ours")
    assert ours.checks == []
    assert ours.transfers == chain.bank_transfers == ref.transfers
    assert ours.contents == ref.contents
    tool = verify(prepare_tool(chain, tmp_path, srv), "mariadb11", tmp_path / "run-tool", direct=True)
    assert tool.contents == ours.contents
