"""Soak: backups under a DDL storm and the bank-transfer load, each one prepared, restored, started and checked.

Run by hand (minutes per run; CI runs a few representative cases in tests/test_ddl_during_backup.py and
tests/test_backup.py::test_backup_during_ddl_churn)::

    .venv/bin/python -m tools.soak_ddl --kinds mariadb10,mysql9,mariadb11 --runs 20
    .venv/bin/python -m tools.soak_ddl --kinds mariadb10 --runs 3 --modes reduced,full,peer --filler-mb 2000

Per run: a fresh DDL schema (tools.load.DdlLoad: CREATE, INSERT, RENAME, ALTER ... FORCE, ADD COLUMN, TRUNCATE,
DROP, in a loop) and bank transfers (tools.load.BankLoad) run for the whole backup; then the backup is prepared,
restored and started, and must pass: the bank invariant (a prefix of the committed transfers), every DDL table
whole (check_ddl), CHECK TABLE on every table of the three schemas, and no orphan or missing .ibd in the DDL schema.
Reported: wall time of the backup, the longest DDL step that ran during it (a step waits for the backup's DDL lock
if there is one) and its fraction of the wall time, and how many files the end of the backup settled.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tools.load import BankLoad, DdlLoad, check_ddl
from tools.sandbox import Server, start_server

REPO = Path(__file__).resolve().parent.parent
FILLER = "filler"


@dataclass
class RunResult:
    kind: str
    tool: str
    run: int
    wall: float
    longest_ddl: float
    settled: int
    ok: bool
    error: str = ""
    longest_myisam: float = 0.0

    @property
    def fraction(self) -> float:
        return self.longest_ddl / self.wall if self.wall else 0.0


def _log(msg: str) -> None:
    print(f"soak_ddl: {msg}", file=sys.stderr, flush=True)


def _filler(srv: Server, mb: int) -> None:
    """A table of about ``mb`` MiB, so that the copy takes a while (made once per server)."""
    srv.execute(f"CREATE DATABASE IF NOT EXISTS {FILLER}")
    if srv.query(f"SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='{FILLER}'")[0][0]:
        return
    srv.execute_script(["CREATE TABLE f (id INT AUTO_INCREMENT PRIMARY KEY, v VARBINARY(1000)) ENGINE=InnoDB",
                        "INSERT INTO f (v) VALUES (RANDOM_BYTES(900))"], database=FILLER)
    rows = 1
    while rows * 1000 < mb * 1024 * 1024:
        srv.execute_script(["INSERT INTO f (v) SELECT RANDOM_BYTES(900) FROM f"], database=FILLER)
        rows *= 2


class _MyisamWriter(threading.Thread):
    """INSERTs into a MyISAM table every 50 ms, timing each (non-transactional writes wait for some backup locks)."""

    def __init__(self, srv: Server) -> None:
        super().__init__(daemon=True)
        srv.execute_script(["CREATE DATABASE IF NOT EXISTS myi",
                            "CREATE TABLE IF NOT EXISTS myi.t (id INT AUTO_INCREMENT PRIMARY KEY, v INT) "
                            "ENGINE=MyISAM"])
        self.conn = srv.connect()
        self.stop = threading.Event()
        self.times: list[tuple[float, float]] = []

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                t = time.monotonic()
                cur.execute("INSERT INTO myi.t (v) VALUES (1)")
                self.times.append((t, time.monotonic() - t))
                self.stop.wait(0.05)
        self.conn.close()


def _check_restored(restored: Server, bank: BankLoad) -> None:
    conn = restored.connect()
    try:
        bank.check(conn)
        if check_ddl(conn) < 1:
            raise AssertionError("no DDL table in the restored backup")
    finally:
        conn.close()
    for db in ("bank", "ddl", FILLER):
        for (table,) in restored.query("SELECT table_name FROM information_schema.tables WHERE table_schema=%s",
                                       (db,)):
            rows = restored.query(f"CHECK TABLE `{db}`.`{table}`")
            if rows[-1][3] != "OK":
                raise AssertionError(f"CHECK TABLE {db}.{table}: {rows}")
    tables = {r[0] for r in restored.query("SELECT table_name FROM information_schema.tables WHERE table_schema='ddl'")}
    files = {p.stem for p in (restored.datadir / "ddl").glob("*.ibd")}
    if files != tables:
        raise AssertionError(f"ddl: files without a table {sorted(files - tables)}, tables without a file "
                             f"{sorted(tables - files)}")


def _run(cmd: list[str], log: Path, timeout: float = 1800) -> None:
    with open(log, "ab") as err:
        res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, timeout=timeout, check=False)
    if res.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{cmd[2:4]} exit {res.returncode}: {' | '.join(tail)}")


def one_run(srv: Server, args: argparse.Namespace, n: int, work: Path, mode: str) -> RunResult:
    peer = mode == "peer"
    tool = "mariadb-backup" if peer else f"innostream --lock-ddl={mode}"
    run_dir = work / f"run{n}-{mode}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    backup, log = run_dir / "backup", run_dir / "log"
    bank = BankLoad(srv, max_transfers=None, max_seconds=3600, seed=n)
    bank.setup()
    ddl = DdlLoad(srv, keep=8, max_steps=None, max_seconds=3600, seed=n)
    ddl.setup()
    myisam = _MyisamWriter(srv)
    bank.start()
    ddl.start()
    myisam.start()
    result = RunResult(srv.kind, tool, n, 0.0, 0.0, 0, False)
    try:
        ddl.wait_for(3)
        bank.wait_for(20)
        conn = ["--socket", str(srv.socket), "--user", "root"]
        if peer:
            assert srv.backup_tool is not None, f"{srv.kind} has no mariadb-backup"
            cmd = [str(srv.backup_tool), "--backup", f"--target-dir={backup}", f"--socket={srv.socket}",
                   "--user=root", f"--parallel={args.parallel}"]
        else:
            cmd = [sys.executable, "-m", "innostream", "backup", *conn, "--target-dir", str(backup),
                   f"--lock-ddl={mode}", "--parallel", str(args.parallel), "--no-fsync"]
            if args.throttle:
                cmd += ["--throttle", str(args.throttle)]
        t0 = time.monotonic()
        _run(cmd, log)
        t1 = time.monotonic()
        result.wall = t1 - t0
        ddl.wait_for(ddl.committed + 1, timeout=120)
    finally:
        bank.stop()
        ddl.stop()
        myisam.stop.set()
        myisam.join(timeout=120)
    result.longest_myisam = max((took for start, took in myisam.times if start < t1 and start + took > t0),
                                default=0.0)
    result.longest_ddl = max((took for start, took in ddl.steps if start < t1 and start + took > t0), default=0.0)
    text = log.read_text(errors="replace")
    result.settled = text.count("DDL during the backup:")
    try:
        if peer:
            _run([str(srv.backup_tool), "--prepare", f"--target-dir={backup}"], log)
            datadir = backup
        else:
            _run([sys.executable, "-m", "innostream", "prepare", "--target-dir", str(backup), "--server-binary",
                  str(srv.server_binary), "--no-fsync"], log)
            datadir = run_dir / "restored"
            _run([sys.executable, "-m", "innostream", "restore", "--target-dir", str(backup), "--datadir",
                  str(datadir), "--no-fsync"], log)
        restored = start_server(srv.kind, run_dir / "server", datadir=datadir, initialize=False)
        try:
            _check_restored(restored, bank)
        finally:
            restored.stop()
        result.ok = True
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    except Exception as exc:  # reported, and the run directory kept for a post-mortem
        result.error = f"{type(exc).__name__}: {exc}"[:400]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="mariadb10,mysql9,mariadb11")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--modes", default="reduced",
                    help="comma-separated, alternated in every run: reduced, full (innostream --lock-ddl=...), peer "
                         "(mariadb-backup, MariaDB kinds)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--throttle", type=float, default=None, help="innostream --throttle MB/s (a longer copy)")
    ap.add_argument("--filler-mb", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/innostream-soak-ddl"))
    ap.add_argument("--keep", action="store_true", help="keep every run's directory, not only failed ones")
    args = ap.parse_args(argv)
    results: list[RunResult] = []
    for kind in args.kinds.split(","):
        work = args.workdir / kind
        shutil.rmtree(work, ignore_errors=True)
        srv = start_server(kind, work / "source", options=["--log-bin=binlog", "--server-id=1"]
                           if kind != "mysql9" else ["--server-id=1"])
        try:
            _filler(srv, args.filler_mb)
            for n, mode in ((n, m) for n in range(1, args.runs + 1) for m in args.modes.split(",")):
                r = one_run(srv, args, n, work, mode)
                results.append(r)
                _log(f"{kind} {r.tool} run {n}: {'ok' if r.ok else 'FAILED ' + r.error}; backup {r.wall:.2f} s, "
                     f"longest DDL step {r.longest_ddl:.2f} s ({r.fraction:.0%}), longest MyISAM INSERT "
                     f"{r.longest_myisam:.2f} s, {r.settled} files settled at the end")
        finally:
            srv.stop()
    print("| server | tool | runs | ok | backup wall (median) | longest DDL step (max) | max fraction | "
          "longest MyISAM INSERT (max) |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, tool in dict.fromkeys((r.kind, r.tool) for r in results):
        rs = [r for r in results if r.kind == kind and r.tool == tool]
        if rs:
            print(f"| {kind} | {rs[0].tool} | {len(rs)} | {sum(r.ok for r in rs)} | "
                  f"{statistics.median(r.wall for r in rs):.2f} s | {max(r.longest_ddl for r in rs):.2f} s | "
                  f"{max(r.fraction for r in rs):.0%} | {max(r.longest_myisam for r in rs):.2f} s |")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
