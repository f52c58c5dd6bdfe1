"""Write load against a test server (tools/sandbox.py) while a backup runs, and checks that a restored copy is
consistent. Every load is bounded in count and time and stops by itself.

* :class:`BankLoad` -- money transfers between accounts plus a hash-chained ledger. A restore that mixes pages from
  different moments (a torn backup) breaks one of its invariants; see :func:`check_bank`.
* :class:`DdlLoad` -- creates, fills, renames, rebuilds and drops tables in schema ``ddl`` (new .ibd files and space
  ids appear and vanish under the backup); :func:`check_ddl` checks every surviving table is whole.
* :func:`sysbench_prepare` / :func:`sysbench_run` / :func:`sysbench_start` -- Debian's sysbench ``oltp_read_write``.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pymysql

if TYPE_CHECKING:
    from tools.sandbox import Server

BANK_SCHEMA = "bank"
DDL_SCHEMA = "ddl"
GENESIS = "0" * 64  # chain value before the first transfer


class InvariantViolation(AssertionError):
    """A restored (or live) database is not in a state any sequence of committed transactions could produce."""


def _chain(prev: str, seq: int, src: int, dst: int, amount: int) -> str:
    """Ledger hash chain: each transfer's value commits to all earlier transfers, in order."""
    return hashlib.sha256(f"{prev}:{seq}:{src}:{dst}:{amount}".encode()).hexdigest()


@dataclass
class LoadStats:
    """What a load did; ``committed`` counts transactions whose COMMIT returned OK."""

    committed: int = 0
    errors: int = 0
    seconds: float = 0.0
    last_error: str | None = None
    extra: dict[str, int] = field(default_factory=dict)


class _Loop:
    """A worker thread running ``self._one(conn, rnd)`` until stopped, ``max_ops`` or ``max_seconds``."""

    def __init__(self, server: Server, threads: int, max_ops: int | None, max_seconds: float, seed: int) -> None:
        self.server = server
        self.threads = threads
        self.max_ops = max_ops
        self.max_seconds = max_seconds
        self.seed = seed
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._started = 0.0
        self._ended = 0.0
        self.stats = LoadStats()

    def _one(self, conn: Any, rnd: random.Random) -> None:
        raise NotImplementedError

    def _worker(self, n: int) -> None:
        rnd = random.Random(self.seed * 1000 + n)
        conn = None
        consecutive = 0
        deadline = self._started + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.max_ops is not None and self.stats.committed >= self.max_ops:
                    break
            try:
                if conn is None:
                    conn = self.server.connect(database=self.schema, autocommit=False)
                self._one(conn, rnd)
                consecutive = 0
                with self._lock:
                    self.stats.committed += 1
            except pymysql.MySQLError as exc:
                with self._lock:
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                consecutive += 1
                if conn is not None:
                    try:
                        conn.rollback()
                    except pymysql.MySQLError:
                        conn = None
                if consecutive >= 20:  # the server is gone (killed by a crash test, say): stop quietly
                    break
                time.sleep(0.05)
        if conn is not None:
            try:
                conn.close()
            except pymysql.MySQLError:
                pass

    schema = ""

    def start(self) -> _Loop:
        """Start the worker threads (daemon threads: they never keep the interpreter alive)."""
        if self._workers:
            raise RuntimeError("load already started")
        self._started = time.monotonic()
        name = type(self).__name__
        self._workers = [threading.Thread(target=self._worker, args=(i,), daemon=True, name=f"{name}-{i}")
                         for i in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def stop(self) -> LoadStats:
        """Ask the workers to finish their current transaction, wait for them, and return the counts."""
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)
        self._ended = time.monotonic()
        self.stats.seconds = self._ended - self._started
        return self.stats

    def wait(self, timeout: float | None = None) -> LoadStats:
        """Wait until the load ends by itself (count or time bound), then return the counts."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._workers:
            t.join(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.stop()

    def wait_for(self, committed: int, timeout: float = 60.0) -> None:
        """Block until at least ``committed`` transactions committed (e.g. before starting a backup)."""
        deadline = time.monotonic() + timeout
        while self.committed < committed:
            if time.monotonic() > deadline or not any(t.is_alive() for t in self._workers):
                raise TimeoutError(f"{type(self).__name__}: {self.committed} of {committed} commits "
                                   f"(last error: {self.stats.last_error})")
            time.sleep(0.02)

    @property
    def committed(self) -> int:
        with self._lock:
            return self.stats.committed

    def __enter__(self) -> _Loop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BankLoad(_Loop):
    """Random transfers between ``accounts`` accounts, each also appending a row to a hash-chained ledger.

    Tables (schema ``bank``): ``accounts(id, balance)``, ``ledger(id AUTO_INCREMENT, seq, src, dst, amount, chain,
    pad)`` and ``head(id=1, seq, chain)``. One transfer is one transaction: lock ``head``, move ``amount`` between two
    accounts, insert the ledger row numbered ``head.seq + 1`` with ``chain = sha256(prev chain, transfer)``, update
    ``head``. Locking ``head`` first serializes transfers, so committed ``seq`` values are exactly 1..N.

    Usage::

        load = BankLoad(server); load.setup(); load.start(); ...; stats = load.stop()
        load.check(conn)   # on the source, or on a server started on the restored backup
    """

    schema = BANK_SCHEMA

    def __init__(
        self,
        server: Server,
        accounts: int = 200,
        initial: int = 1000,
        threads: int = 1,
        max_transfers: int | None = 100_000,
        max_seconds: float = 120.0,
        seed: int = 1,
        pad: int = 200,
        schema: str = BANK_SCHEMA,
    ) -> None:
        super().__init__(server, threads, max_transfers, max_seconds, seed)
        self.schema = schema
        self.accounts = accounts
        self.initial = initial
        self.pad = pad  # bytes of filler per ledger row, so the ledger spans many pages quickly

    def setup(self) -> None:
        """(Re)create the schema (default ``bank``) with every account at ``initial``."""
        conn = self.server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{self.schema}`")
                cur.execute(f"CREATE DATABASE `{self.schema}`")
                cur.execute(f"USE `{self.schema}`")
                cur.execute("CREATE TABLE accounts (id INT NOT NULL PRIMARY KEY, balance BIGINT NOT NULL)"
                            " ENGINE=InnoDB")
                cur.execute(
                    "CREATE TABLE ledger (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, seq BIGINT NOT NULL,"
                    " src INT NOT NULL, dst INT NOT NULL, amount INT NOT NULL, chain CHAR(64) NOT NULL,"
                    " pad VARBINARY(1024) NOT NULL, UNIQUE KEY seq (seq), KEY src (src), KEY dst (dst)) ENGINE=InnoDB"
                )
                cur.execute("CREATE TABLE head (id INT NOT NULL PRIMARY KEY, seq BIGINT NOT NULL,"
                            " chain CHAR(64) NOT NULL) ENGINE=InnoDB")
                cur.executemany("INSERT INTO accounts VALUES (%s, %s)",
                                [(i, self.initial) for i in range(1, self.accounts + 1)])
                cur.execute("INSERT INTO head VALUES (1, 0, %s)", (GENESIS,))
        finally:
            conn.close()

    def _one(self, conn: Any, rnd: random.Random) -> None:
        src, dst = rnd.sample(range(1, self.accounts + 1), 2)
        amount = rnd.randint(1, 100)
        with conn.cursor() as cur:
            conn.begin()
            cur.execute("SELECT seq, chain FROM head WHERE id = 1 FOR UPDATE")
            seq, prev = cur.fetchone()
            seq += 1
            chain = _chain(prev, seq, src, dst, amount)
            cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, src))
            cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, dst))
            cur.execute("INSERT INTO ledger (seq, src, dst, amount, chain, pad) VALUES (%s, %s, %s, %s, %s, %s)",
                        (seq, src, dst, amount, chain, rnd.randbytes(self.pad)))
            cur.execute("UPDATE head SET seq = %s, chain = %s WHERE id = 1", (seq, chain))
            conn.commit()

    def check(self, conn: Any, min_transfers: int = 0, max_transfers: int | None = None) -> int:
        """Check the invariants on ``conn``'s server; see :func:`check_bank`."""
        return check_bank(conn, self.accounts, self.initial, min_transfers, max_transfers, self.schema)


def check_bank(conn: Any, accounts: int, initial: int, min_transfers: int = 0,
               max_transfers: int | None = None, schema: str = BANK_SCHEMA) -> int:
    """Assert schema ``bank`` is a state some prefix of the committed transfers produces; return its length.

    Checks: all accounts present and ``sum(balance) == accounts * initial``; ledger ``seq`` values are exactly 1..N
    with N == ``head.seq``; replaying the hash chain over the ledger gives ``head.chain``; every balance equals
    ``initial`` plus what the ledger says came in minus what went out; ``min_transfers <= N <= max_transfers``
    (e.g. N must include every transfer committed before the backup's consistency point).

    Raises:
        InvariantViolation: naming the first broken invariant.
    """
    with conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*), COALESCE(SUM(balance), 0) FROM `{schema}`.accounts")
        n_acc, total = cur.fetchone()
        if n_acc != accounts:
            raise InvariantViolation(f"bank: {n_acc} accounts, expected {accounts}")
        if int(total) != accounts * initial:
            raise InvariantViolation(f"bank: total balance {total}, expected {accounts * initial}")
        cur.execute(f"SELECT seq, chain FROM `{schema}`.head WHERE id = 1")
        row = cur.fetchone()
        if row is None:
            raise InvariantViolation("bank: head row missing")
        head_seq, head_chain = row
        cur.execute(f"SELECT seq, src, dst, amount, chain FROM `{schema}`.ledger ORDER BY seq")
        chain = GENESIS
        expected = 1
        delta: dict[int, int] = {}
        for seq, src, dst, amount, stored in cur.fetchall():
            if seq != expected:
                raise InvariantViolation(f"bank: ledger seq {seq} where {expected} was expected "
                                         "(missing or extra rows)")
            chain = _chain(chain, seq, src, dst, amount)
            if chain != stored:
                raise InvariantViolation(f"bank: ledger chain broken at seq {seq}")
            delta[src] = delta.get(src, 0) - amount
            delta[dst] = delta.get(dst, 0) + amount
            expected += 1
        n = expected - 1
        if n != head_seq or chain != head_chain:
            raise InvariantViolation(f"bank: ledger has {n} transfers but head says {head_seq} (or chain differs)")
        cur.execute(f"SELECT id, balance FROM `{schema}`.accounts")
        for acc, balance in cur.fetchall():
            if balance != initial + delta.get(acc, 0):
                raise InvariantViolation(f"bank: account {acc} balance {balance}, ledger says "
                                         f"{initial + delta.get(acc, 0)}")
        cur.execute(f"SELECT COUNT(*) FROM `{schema}`.ledger")
        (rows,) = cur.fetchone()
        if rows != n:
            raise InvariantViolation(f"bank: {rows} ledger rows for {n} transfers")
    if n < min_transfers:
        raise InvariantViolation(f"bank: only {n} transfers, but {min_transfers} had committed (lost commits)")
    if max_transfers is not None and n > max_transfers:
        raise InvariantViolation(f"bank: {n} transfers, more than the {max_transfers} ever committed")
    return n


# ---------------------------------------------------------------------------------------------------------------


def ddl_rows(i: int) -> int:
    """Rows table number ``i`` is created with (so a restored table can be checked on its own)."""
    return 10 + i % 40


_DDL_NAME = re.compile(r"^[tru]_(\d+)$")


class DdlLoad(_Loop):
    """DDL churn in schema ``ddl``: each step creates ``tmp_i``, fills it with ddl_rows(i) rows and renames it to
    ``t_i`` (so a ``t_``/``r_`` table is always whole), then renames an older ``t_`` to ``r_``, rebuilds one
    (``ALTER TABLE ... FORCE``: new .ibd file), adds a column to one, every 7th step renames one to ``u_`` and
    TRUNCATEs it (a new tablespace id), and drops the oldest beyond ``keep``. ``committed`` counts steps;
    ``stats.extra`` counts each kind of statement."""

    schema = DDL_SCHEMA

    def __init__(self, server: Server, keep: int = 8, max_steps: int | None = 2000, max_seconds: float = 120.0,
                 seed: int = 2) -> None:
        super().__init__(server, 1, max_steps, max_seconds, seed)
        self.keep = keep
        self._next = 0
        self._live: list[str] = []
        self.steps: list[tuple[float, float]] = []  # (monotonic start, seconds) of every step

    def setup(self) -> None:
        """(Re)create the empty schema ``ddl``."""
        conn = self.server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {DDL_SCHEMA}")
                cur.execute(f"CREATE DATABASE {DDL_SCHEMA}")
        finally:
            conn.close()

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats.extra[what] = self.stats.extra.get(what, 0) + 1

    def _one(self, conn: Any, rnd: random.Random) -> None:
        started = time.monotonic()
        try:
            self._step(conn, rnd)
        finally:
            took = time.monotonic() - started
            with self._lock:
                self.longest_step = max(self.longest_step, took)
                self.steps.append((started, took))

    longest_step = 0.0  # seconds of the slowest step (a step that waited for a backup's DDL lock)

    def _step(self, conn: Any, rnd: random.Random) -> None:
        i = self._next
        self._next += 1
        n = ddl_rows(i)
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS tmp_{i}")
            cur.execute(f"CREATE TABLE tmp_{i} (id INT NOT NULL PRIMARY KEY, v INT NOT NULL, s VARCHAR(100))"
                        " ENGINE=InnoDB")
            cur.executemany(f"INSERT INTO tmp_{i} VALUES (%s, %s, %s)",
                            [(j, i * 1000 + j, "x" * (j % 100)) for j in range(1, n + 1)])
            conn.commit()
            cur.execute(f"RENAME TABLE tmp_{i} TO t_{i}")
            self._live.append(f"t_{i}")
            self._count("create")
            if len(self._live) >= 3:
                k = rnd.randrange(len(self._live) - 1)
                name = self._live[k]
                if name.startswith("t_"):
                    new = "r_" + name[2:]
                    cur.execute(f"RENAME TABLE {name} TO {new}")
                    self._live[k] = new
                    self._count("rename")
                elif i % 7 == 3 and name.startswith("r_"):
                    new = "u_" + name[2:]
                    cur.execute(f"RENAME TABLE {name} TO {new}")
                    cur.execute(f"TRUNCATE TABLE {new}")
                    self._live[k] = new
                    self._count("truncate")
                else:
                    cur.execute(f"ALTER TABLE {name} FORCE")
                    self._count("rebuild")
            if i % 5 == 4:
                cur.execute(f"ALTER TABLE {self._live[-1]} ADD COLUMN extra INT NOT NULL DEFAULT 7")
                self._count("alter")
            while len(self._live) > self.keep:
                cur.execute(f"DROP TABLE {self._live.pop(0)}")
                self._count("drop")


def check_ddl(conn: Any) -> int:
    """Assert every ``t_i``/``r_i`` table in schema ``ddl`` is readable and whole, and every ``u_i`` either whole or
    empty (it is renamed, then truncated); return how many tables were checked."""
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (DDL_SCHEMA,))
        names = [r[0] for r in cur.fetchall()]
        checked = 0
        for name in names:
            m = _DDL_NAME.match(name)
            if not m:
                continue
            i = int(m.group(1))
            n = ddl_rows(i)
            cur.execute(f"SELECT COUNT(*), COALESCE(SUM(v), 0) FROM {DDL_SCHEMA}.{name}")
            count, total = cur.fetchone()
            want = sum(i * 1000 + j for j in range(1, n + 1))
            if name.startswith("u_") and count == 0:
                pass
            elif count != n or int(total) != want:
                raise InvariantViolation(f"ddl: {name} has {count} rows (sum {total}), expected {n} (sum {want})")
            checked += 1
    return checked


# ---------------------------------------------------------------------------------------------------------------
# sysbench


def _sysbench_argv(server: Server, tables: int, table_size: int, db: str) -> list[str]:
    exe = shutil.which("sysbench")
    if exe is None:
        raise FileNotFoundError("sysbench is not installed (tools/setup.sh installs it)")
    return [exe, "oltp_read_write", "--db-driver=mysql", f"--mysql-socket={server.socket}", "--mysql-user=root",
            "--mysql-password=", f"--mysql-db={db}", f"--tables={tables}", f"--table-size={table_size}"]


def sysbench_prepare(server: Server, tables: int = 4, table_size: int = 10_000, db: str = "sbtest") -> None:
    """Create ``db`` and sysbench's ``sbtest1..N`` tables with ``table_size`` rows each."""
    server.execute(f"DROP DATABASE IF EXISTS `{db}`")
    server.execute(f"CREATE DATABASE `{db}`")
    res = subprocess.run([*_sysbench_argv(server, tables, table_size, db), "prepare"], capture_output=True,
                         text=True, check=False, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"sysbench prepare failed (exit {res.returncode}): {res.stderr or res.stdout}")


def sysbench_start(server: Server, seconds: float, threads: int = 2, tables: int = 4, table_size: int = 10_000,
                   db: str = "sbtest") -> subprocess.Popen[str]:
    """Start ``sysbench oltp_read_write run`` in the background (ends by itself after ``seconds``)."""
    argv = [*_sysbench_argv(server, tables, table_size, db), f"--threads={threads}", f"--time={max(1, round(seconds))}",
            # 1213 deadlock, 1205 lock wait timeout, 1020 MariaDB 11 snapshot isolation conflict: retried by sysbench
            "--report-interval=0", "--mysql-ignore-errors=1213,1205,1020", "run"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)


def sysbench_result(proc: subprocess.Popen[str], timeout: float | None = None) -> dict[str, float]:
    """Wait for a :func:`sysbench_start` run and parse its summary (transactions, tps, queries, errors...)."""
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"sysbench run failed (exit {proc.returncode}):\n{out[-2000:]}")
    return parse_sysbench(out)


def sysbench_run(server: Server, seconds: float, threads: int = 2, tables: int = 4, table_size: int = 10_000,
                 db: str = "sbtest") -> dict[str, float]:
    """Run ``oltp_read_write`` for ``seconds`` and return its summary."""
    proc = sysbench_start(server, seconds, threads, tables, table_size, db)
    return sysbench_result(proc, timeout=seconds + 120)


def parse_sysbench(out: str) -> dict[str, float]:
    """The numbers of sysbench's summary: transactions, tps, queries, qps, errors, reconnects, seconds."""
    res: dict[str, float] = {}
    patterns = {
        "transactions": r"transactions:\s+(\d+)\s+\(([\d.]+) per sec",
        "queries": r"queries:\s+(\d+)\s+\(([\d.]+) per sec",
        "errors": r"ignored errors:\s+(\d+)",
        "reconnects": r"reconnects:\s+(\d+)",
        "seconds": r"total time:\s+([\d.]+)s",
    }
    for key, pat in patterns.items():
        m = re.search(pat, out)
        if m is None:
            raise ValueError(f"sysbench output has no {key!r} line:\n{out[-2000:]}")
        res[key] = float(m.group(1))
        if key == "transactions":
            res["tps"] = float(m.group(2))
        elif key == "queries":
            res["qps"] = float(m.group(2))
    return res
