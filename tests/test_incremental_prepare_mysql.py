"""prepare of a MySQL 9.7 incremental chain: a base and three incrementals taken under the bank load with DDL
between backups (tools/soak_incremental.py). MySQL has no redo-only recovery we can prove, so its incrementals
start at the previous backup's start checkpoint and prepare lays the deltas over the base in order, then recovers
once with the last link's redo (docs/PREPARE.md, "Incremental chains"). The prepared chain must start, pass CHECK
TABLE and the bank invariant, and hold exactly what a full backup taken right after the last incremental holds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from innostream.formats.xtrabackup_meta import parse_checkpoints

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
    run,
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

