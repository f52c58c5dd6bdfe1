"""Incremental chains on real servers: build one under the bank load with DDL between backups, prepare it (ours
and, for MariaDB, real ``mariadb-backup``), start a server on each result and compare.

Used by tests/test_incremental_prepare*.py (one small chain per server) and, run as a script, for long randomised
soaks::

    python -m tools.soak_incremental --kind mariadb10 --rounds 5 --incrementals 3 --workdir /tmp/soak

Each round: a fresh server; bank load (tools/load.py) running while the base and every incremental but the last
are taken; between backups a table is created, one dropped and one rebuilt (ALTER TABLE ... FORCE); the load is
stopped before the last incremental, so a full backup taken right after it holds the same data. Checks: the
prepared chain restores and starts, CHECK TABLE is clean everywhere, the bank invariant holds, every table's
CHECKSUM TABLE equals the reference full backup's (and, with --interop, ``mariadb-backup --prepare
--incremental-dir``'s).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.load import BankLoad, check_bank
from tools.sandbox import Server, start_server, table_checksums

REPO = Path(__file__).resolve().parents[1]
INNOSTREAM = [sys.executable, "-m", "innostream"]
CHAIN_SCHEMA = "chain"
SESSION_OPTIONS = {"mariadb10": ["--log-bin=binlog", "--server-id=1"], "mysql9": ["--server-id=1"],
                   "mariadb11": ["--log-bin=binlog", "--server-id=1"]}


def run(argv: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout, env=env, cwd=REPO,
                          stdin=subprocess.DEVNULL)


def must(res: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {res.returncode}):\n{res.stderr[-4000:]}")
    return res


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path: to show a refused prepare changed nothing."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def child_pids(pid: int) -> list[int]:
    """The child processes of ``pid`` (prepare's recovery server)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def prepare_cmd(target: Path, server_binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``innostream prepare --target-dir TARGET --server-binary ... --no-fsync ARGS``."""
    return run([*INNOSTREAM, "prepare", "--target-dir", str(target), "--server-binary", str(server_binary),
                "--no-fsync", *args])


def our_backup(srv: Server, target: Path, basedir: Path | None = None, extra: list[str] | None = None) -> None:
    argv = [*INNOSTREAM, "backup", "--socket", str(srv.socket), "--user", "root", "--datadir", str(srv.datadir),
            "--target-dir", str(target), "--no-fsync", *(extra or [])]
    if basedir is not None:
        argv += ["--incremental-basedir", str(basedir)]
    must(run(argv), f"innostream backup -> {target}")


def tool_backup(srv: Server, target: Path, basedir: Path | None = None) -> None:
    """The flavour's own mariadb-backup (MariaDB only)."""
    assert srv.backup_tool is not None
    argv = [str(srv.backup_tool), "--backup", f"--target-dir={target}", f"--socket={srv.socket}", "--user=root"]
    if basedir is not None:
        argv.append(f"--incremental-basedir={basedir}")
    must(run(argv), f"mariadb-backup -> {target}")


def ddl_step(srv: Server, step: int) -> None:
    """Between two backups: a table created, one dropped, one rebuilt (new space id), rows changed in the rest."""
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{CHAIN_SCHEMA}`")
            cur.execute(f"USE `{CHAIN_SCHEMA}`")
            if step == 0:
                for name in ("keep", "rebuilt", "dropped_1", "dropped_2", "dropped_3"):
                    cur.execute(f"CREATE TABLE `{name}` (id INT PRIMARY KEY, v VARCHAR(200), KEY v (v(20))) "
                                "ENGINE=InnoDB")
                    cur.executemany(f"INSERT INTO `{name}` VALUES (%s, %s)",
                                    [(i, f"{name}-{i}-" + "x" * (i % 150)) for i in range(2000)])
                return
            cur.execute(f"CREATE TABLE `created_{step}` (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=InnoDB")
            cur.executemany(f"INSERT INTO `created_{step}` VALUES (%s, %s)",
                            [(i, f"c{step}-{i}") for i in range(500 * step)])
            cur.execute(f"DROP TABLE IF EXISTS `dropped_{step}`")
            cur.execute("UPDATE `rebuilt` SET v = CONCAT(v, %s) WHERE id %% 3 = 0", (str(step),))
            cur.execute("ALTER TABLE `rebuilt` FORCE")
            cur.execute("UPDATE `keep` SET v = REVERSE(v) WHERE id %% 7 = %s", (step % 7,))
            cur.execute("DELETE FROM `keep` WHERE id %% 97 = %s", (step,))
    finally:
        conn.close()


def checkpoint_lsn(srv: Server) -> int:
    name = "Innodb_redo_log_checkpoint_lsn" if srv.flavor == "mysql" else "Innodb_lsn_last_checkpoint"
    return int(srv.query(f"SHOW GLOBAL STATUS LIKE '{name}'")[0][1])


def wait_checkpoint_past(srv: Server, lsn: int, timeout: float = 60.0) -> None:
    """Until the server's checkpoint passes ``lsn``: each backup then starts at a new checkpoint, so the chain's
    LSNs tell its links apart and the deltas carry pages (MySQL checkpoints lag far behind under the load)."""
    deadline = time.monotonic() + timeout
    while checkpoint_lsn(srv) <= lsn:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the checkpoint did not pass LSN {lsn} in {timeout:.0f} s")
        time.sleep(0.2)


def _to_lsn(backup: Path) -> int:
    name = "xtrabackup_checkpoints" if (backup / "xtrabackup_checkpoints").exists() else "mariadb_backup_checkpoints"
    for line in (backup / name).read_text().splitlines():
        if line.startswith("to_lsn"):
            return int(line.split("=")[1])
    raise RuntimeError(f"{backup}: no to_lsn")


@dataclass
class Chain:
    base: Path
    incs: list[Path]
    reference: Path  # a full backup taken right after the last incremental, the source quiet
    bank_transfers: int = 0
    notes: list[str] = field(default_factory=list)


def build_chain(srv: Server, root: Path, incrementals: int, maker: str = "ours", transfers: int = 400,
                seed: int = 1, base_extra: list[str] | None = None) -> Chain:
    """Base (ours) + ``incrementals`` incrementals (``maker``: "ours" or "tool" = mariadb-backup) + a reference
    full backup (ours) after the last one, with the bank load and DDL as the module docstring says.
    ``base_extra``: more options for the base backup (e.g. ``--throttle``, so the checkpoint moves during it)."""
    root.mkdir(parents=True, exist_ok=True)
    inc_backup = our_backup if maker == "ours" else tool_backup
    # Flush eagerly so checkpoints (each backup's LSNs) move and deltas carry pages, not only redo.
    srv.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    srv.execute("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001")
    load = BankLoad(srv, threads=2, max_transfers=None, max_seconds=600, seed=seed)
    load.setup()
    ddl_step(srv, 0)
    chain = Chain(root / "base", [], root / "reference")
    load.start()
    try:
        load.wait_for(transfers // 4, timeout=120)
        our_backup(srv, chain.base, extra=base_extra)
        prev = chain.base
        for k in range(1, incrementals + 1):
            load.wait_for(load.committed + transfers // 4, timeout=120)
            ddl_step(srv, k)
            wait_checkpoint_past(srv, _to_lsn(prev))
            if k == incrementals:
                chain.bank_transfers = load.stop().committed
            inc = root / f"inc{k}"
            inc_backup(srv, inc, prev)
            chain.incs.append(inc)
            prev = inc
    finally:
        load.stop()
    our_backup(srv, chain.reference)
    return chain


def prepare_ours(chain: Chain, work: Path, srv: Server, kill_after: float | None = None) -> Path:
    """Copy base and incrementals (never changed), prepare the chain with innostream; returns the prepared dir.
    With ``kill_after``: kill -9 the prepare after that many seconds (if still running), then run it again."""
    target = work / "ours"
    shutil.copytree(chain.base, target, symlinks=True)
    argv = [*INNOSTREAM, "prepare", "--target-dir", str(target), "--server-binary", str(srv.server_binary),
            "--no-fsync"]
    for inc in chain.incs:
        argv += ["--incremental-dir", str(inc)]
    if kill_after is not None:
        proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            journal = target / "innostream_chain_journal"
            chain.notes.append(f"killed at {kill_after:.1f} s: " +
                               (journal.read_text().replace("\n", " ") if journal.exists() else "no journal"))
            time.sleep(1)  # the recovery server dies with prepare (PR_SET_PDEATHSIG); let it go
    must(run(argv), "innostream prepare (chain)")
    return target


def prepare_tool(chain: Chain, work: Path, srv: Server) -> Path:
    """The same chain with real ``mariadb-backup --prepare`` (base, then each ``--incremental-dir``)."""
    assert srv.backup_tool is not None
    target = work / "tool"
    shutil.copytree(chain.base, target, symlinks=True)
    incs = []
    for inc in chain.incs:  # mariadb-backup deletes the deltas it applied: give it copies
        shutil.copytree(inc, work / ("tool-" + inc.name), symlinks=True)
        incs.append(work / ("tool-" + inc.name))
    must(run([str(srv.backup_tool), "--prepare", f"--target-dir={target}"]), "mariadb-backup --prepare (base)")
    for inc in incs:
        must(run([str(srv.backup_tool), "--prepare", f"--target-dir={target}", f"--incremental-dir={inc}"]),
             f"mariadb-backup --prepare --incremental-dir={inc}")
    return target


def prepare_reference(chain: Chain, work: Path, srv: Server) -> Path:
    target = work / "reference"
    shutil.copytree(chain.reference, target, symlinks=True)
    must(run([*INNOSTREAM, "prepare", "--target-dir", str(target), "--server-binary", str(srv.server_binary),
              "--no-fsync"]), "innostream prepare (reference)")
    return target


def start_on(prepared: Path, kind: str, workdir: Path, direct: bool = False) -> Server:
    """Restore a prepared backup into a fresh datadir and start a server on it (``direct``: on a copy of the
    directory as it is, for mariadb-backup's prepare, which leaves backup_type = log-applied)."""
    datadir = workdir / "data"
    if direct:
        shutil.copytree(prepared, datadir, symlinks=True)
        return start_server(kind, workdir, datadir=datadir, initialize=False)
    must(run([*INNOSTREAM, "restore", "--target-dir", str(prepared), "--datadir", str(datadir), "--no-fsync"]),
         f"innostream restore {prepared}")
    return start_server(kind, workdir, datadir=datadir, initialize=False)


def check_tables(srv: Server) -> list[str]:
    """CHECK TABLE on every table outside the system schemas: the messages that are not OK."""
    bad = []
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_type='BASE TABLE'"
                        " AND table_schema NOT IN ('performance_schema', 'information_schema', 'sys')")
            for schema, table in cur.fetchall():
                cur.execute(f"CHECK TABLE `{schema}`.`{table}`")
                for row in cur.fetchall():
                    if row[2] in ("error", "warning") or (row[2] == "status" and row[3] != "OK"):
                        bad.append(f"{schema}.{table}: {row[2]} {row[3]}")
    finally:
        conn.close()
    return bad


def contents(srv: Server) -> dict[str, dict[str, tuple[int, int]]]:
    """CHECKSUM TABLE and row count of every table in the chain, bank and sample schemas."""
    conn = srv.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT schema_name FROM information_schema.schemata")
            have = {r[0] for r in cur.fetchall()}
    finally:
        conn.close()
    return {s: table_checksums(srv, s) for s in (CHAIN_SCHEMA, "bank", "sample") if s in have}


@dataclass
class Verdict:
    checks: list[str]
    transfers: int
    contents: dict[str, dict[str, tuple[int, int]]]


def verify(prepared: Path, kind: str, workdir: Path, min_transfers: int = 0, direct: bool = False) -> Verdict:
    """Start a server on ``prepared``; CHECK TABLE, the bank invariant, the table checksums."""
    srv = start_on(prepared, kind, workdir, direct)
    try:
        conn = srv.connect()
        try:
            transfers = check_bank(conn, 200, 1000, min_transfers=min_transfers)
        finally:
            conn.close()
        return Verdict(check_tables(srv), transfers, contents(srv))
    finally:
        srv.stop()


def soak(kind: str, rounds: int, incrementals: int, workdir: Path, interop: bool, seed: int,
         kill: bool = False) -> int:
    rnd = random.Random(seed)
    failures = 0
    for r in range(rounds):
        root = workdir / f"round{r}"
        shutil.rmtree(root, ignore_errors=True)
        srv = start_server(kind, root / "src", options=SESSION_OPTIONS[kind])
        try:
            maker = rnd.choice(["ours", "tool"]) if interop and srv.backup_tool else "ours"
            chain = build_chain(srv, root / "backups", incrementals, maker, transfers=rnd.randint(200, 2000),
                                seed=rnd.randint(1, 1 << 30))
        finally:
            srv.stop()
        t0 = time.monotonic()
        ours = prepare_ours(chain, root / "work", srv, rnd.uniform(0.5, 8.0) if kill else None)
        took = time.monotonic() - t0
        ref = prepare_reference(chain, root / "work", srv)
        got = verify(ours, kind, root / "run-ours")
        want = verify(ref, kind, root / "run-ref")
        ok = not got.checks and got.contents == want.contents and got.transfers == want.transfers
        line = f"round {r}: {kind} {maker} chain of {incrementals}: prepare {took:.1f} s, " \
               f"{got.transfers} transfers, check {got.checks or 'clean'}, checksums {'equal' if ok else 'DIFFER'}"
        if interop and srv.backup_tool:
            tool = verify(prepare_tool(chain, root / "work", srv), kind, root / "run-tool", direct=True)
            line += f", mariadb-backup {'equal' if tool.contents == got.contents else 'DIFFERS'}"
            ok = ok and tool.contents == got.contents
        if chain.notes:
            line += " (" + "; ".join(chain.notes) + ")"
        print(line, flush=True)
        failures += not ok
        if ok:
            shutil.rmtree(root, ignore_errors=True)
    return failures


def _timed(argv: list[str]) -> tuple[float, int]:
    """Run ``argv`` under GNU time: (wall seconds, peak RSS in KiB of its largest process, server included)."""
    t0 = time.monotonic()
    res = must(run(["/usr/bin/time", "-f", "MAXRSS %M", *argv]), " ".join(argv[:3]))
    wall = time.monotonic() - t0
    rss = max(int(line.split()[1]) for line in res.stderr.splitlines() if line.startswith("MAXRSS "))
    return wall, rss


def bench(workdir: Path, tables: int, table_size: int, incrementals: int, seconds: float, repeat: int) -> None:
    """Prepare time of base + ``incrementals`` (ours, under sysbench between backups) with innostream and with
    ``mariadb-backup --prepare`` (base, then each --incremental-dir), on copies of the same chain, alternated."""
    from tools.load import sysbench_prepare, sysbench_run

    shutil.rmtree(workdir, ignore_errors=True)
    srv = start_server("mariadb10", workdir / "src", options=SESSION_OPTIONS["mariadb10"])
    try:
        sysbench_prepare(srv, tables, table_size)
        srv.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        srv.execute("SET GLOBAL innodb_max_dirty_pages_pct_lwm = 0.001")
        backups = workdir / "backups"
        our_backup(srv, backups / "base")
        prev = backups / "base"
        for k in range(1, incrementals + 1):
            sysbench_run(srv, seconds, tables=tables, table_size=table_size)
            our_backup(srv, backups / f"inc{k}", prev)
            prev = backups / f"inc{k}"
    finally:
        srv.stop()
    assert srv.backup_tool is not None
    du = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in sorted(backups.iterdir())}
    print("sizes (bytes):", du, flush=True)
    incs = [backups / f"inc{k}" for k in range(1, incrementals + 1)]
    for r in range(repeat):
        for who in ("ours", "tool") if r % 2 == 0 else ("tool", "ours"):
            work = workdir / f"work-{who}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(backups / "base", work / "base")
            if who == "ours":
                argv = [*INNOSTREAM, "prepare", "--target-dir", str(work / "base"), "--server-binary",
                        str(srv.server_binary), "--no-fsync", *[a for i in incs for a in ("--incremental-dir", str(i))]]
                wall, rss = _timed(argv)
            else:
                copies = []
                for i in incs:
                    shutil.copytree(i, work / i.name)
                    copies.append(work / i.name)
                wall, rss = _timed([str(srv.backup_tool), "--prepare", f"--target-dir={work / 'base'}"])
                for c in copies:
                    w, m = _timed([str(srv.backup_tool), "--prepare", f"--target-dir={work / 'base'}",
                                   f"--incremental-dir={c}"])
                    wall, rss = wall + w, max(rss, m)
            print(f"run {r} {who}: {wall:.1f} s, peak RSS {rss / 1024:.0f} MiB", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="mariadb10", choices=sorted(SESSION_OPTIONS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--incrementals", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/soak-incremental"))
    ap.add_argument("--interop", action="store_true", help="also prepare with mariadb-backup and compare")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kill", action="store_true", help="kill -9 each prepare at a random moment, then rerun it")
    ap.add_argument("--bench", action="store_true", help="measure chain prepare time against mariadb-backup")
    ap.add_argument("--tables", type=int, default=8)
    ap.add_argument("--table-size", type=int, default=100_000)
    ap.add_argument("--load-seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args(argv)
    if args.bench:
        bench(args.workdir, args.tables, args.table_size, args.incrementals, args.load_seconds, args.repeat)
        return 0
    failures = soak(args.kind, args.rounds, args.incrementals, args.workdir, args.interop, args.seed, args.kill)
    print(f"{failures} failed round(s) of {args.rounds}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
