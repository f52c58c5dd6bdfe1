"""Real MySQL/MariaDB test servers on private sockets, for tests, demos and benchmarks.

Nothing here is mocked: each :class:`Server` is a real ``mariadbd``/``mysqld`` process with its own datadir under a
scratch directory. Three kinds exist:

* ``mariadb10`` -- Debian 12's MariaDB 10.11 installed on the host;
* ``mysql9``    -- MySQL 9.x from the Debian sid chroot at ``$INNOSTREAM_SID_MYSQL`` (/var/tmp/innostream/sid-mysql);
* ``mariadb11`` -- MariaDB 11.x from the sid chroot at ``$INNOSTREAM_SID_MARIADB`` (/var/tmp/innostream/sid-mariadb).

The chroot servers see the same paths as the host because the host's /tmp is bind-mounted onto ``ROOT/tmp``, so a
workdir under /tmp works for every kind, and the backup tool on the host reads their datadir at the same path.

Command line (for demo and benchmark scripts; the server outlives the command)::

    python -m tools.sandbox start KIND --workdir DIR [--sample] [--option=--innodb-log-file-size=8M ...]
    python -m tools.sandbox stop --workdir DIR [--kill]
    python -m tools.sandbox status --workdir DIR
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

REPO = Path(__file__).resolve().parent.parent
WRAPPERS = REPO / "tools" / "server-wrappers"
SID_MYSQL = Path(os.environ.get("INNOSTREAM_SID_MYSQL", "/var/tmp/innostream/sid-mysql"))
SID_MARIADB = Path(os.environ.get("INNOSTREAM_SID_MARIADB", "/var/tmp/innostream/sid-mariadb"))
STATE_FILE = "sandbox.json"
# sockaddr_un.sun_path is 108 bytes; stay well below it or bind() fails with a confusing error.
MAX_SOCKET_PATH = 100
DEFAULT_BUFFER_POOL = "64M"


class SandboxError(RuntimeError):
    """A test server could not be set up, started or stopped."""


@dataclass(frozen=True)
class Kind:
    """How to install and run one server flavour."""

    name: str
    flavor: str  # "mariadb" | "mysql"
    root: Path | None  # chroot directory, None for the host
    server: str  # server binary path (inside the chroot, if any)
    wrapper: str | None  # wrapper script in tools/server-wrappers/ for chroot kinds
    expected_version: str  # prefix of SELECT VERSION()
    backup_tool: str | None  # the flavour's own backup tool of the same version (reference for comparisons)


KINDS: dict[str, Kind] = {
    "mariadb10": Kind("mariadb10", "mariadb", None, "/usr/sbin/mariadbd", None, "10.11.", "/usr/bin/mariadb-backup"),
    # No xtrabackup for MySQL 9 in Debian: there is no reference tool for it.
    "mysql9": Kind("mysql9", "mysql", SID_MYSQL, "/usr/sbin/mysqld", "mysqld-sid", "9.7.", None),
    "mariadb11": Kind("mariadb11", "mariadb", SID_MARIADB, "/usr/sbin/mariadbd", "mariadbd-sid", "11.8.",
                      "mariadb-backup-sid"),
}


# ---------------------------------------------------------------------------------------------------------------
# chroot plumbing


def _mounted(target: Path) -> bool:
    """True if ``target`` is a mount point (per /proc/mounts, which shows each mount's target path)."""
    want = str(target)
    with open("/proc/mounts") as fh:
        return any(line.split()[1] == want for line in fh if len(line.split()) > 1)


def ensure_chroot(root: Path) -> None:
    """Make a sid chroot usable: host /tmp bind-mounted onto ROOT/tmp, and /proc mounted. Idempotent."""
    if not (root / "usr" / "sbin").is_dir():
        raise SandboxError(f"chroot {root} does not exist or is incomplete; run tools/setup.sh")
    if os.geteuid() != 0:
        raise SandboxError("chroot test servers need root (chroot and mount --bind)")
    # Several test processes may start servers at once: check-then-mount under a lock, or mounts stack up.
    with open(root.parent / f".{root.name}.mount.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tmp = root / "tmp"
        tmp.mkdir(exist_ok=True)
        if not _mounted(tmp):
            subprocess.run(["mount", "--bind", "/tmp", str(tmp)], check=True)
        proc = root / "proc"
        proc.mkdir(exist_ok=True)
        if not _mounted(proc):
            subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)


def _env(kind: Kind) -> dict[str, str]:
    """Environment for a server process: in a chroot only /tmp is shared, so TMPDIR must lie under it."""
    env = dict(os.environ)
    if kind.root is not None and not (env.get("TMPDIR", "/tmp") + "/").startswith("/tmp/"):
        env["TMPDIR"] = "/tmp"
    return env


def _in_root(kind: Kind, argv: list[str]) -> list[str]:
    """Prefix ``argv`` with ``chroot ROOT`` for chroot kinds (chroot execs, so the pid stays the server's)."""
    if kind.root is None:
        return argv
    ensure_chroot(kind.root)
    return ["chroot", str(kind.root), *argv]


# ---------------------------------------------------------------------------------------------------------------
# process helpers


def _alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (our PID 1 may not reap orphans, so kill(pid, 0) is not enough)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _tail(path: Path, lines: int = 25) -> str:
    """The [ERROR] lines of a server log (they can be far from the end) followed by its last lines."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no {path})"
    return _errors_and_tail(text, lines)


def _errors_and_tail(text: str, lines: int = 25) -> str:
    all_lines = text.splitlines()
    tail = all_lines[-lines:]
    errors = [line for line in all_lines[:-lines] if "[ERROR]" in line][:10]
    return "\n".join([*errors, *(["..."] if errors else []), *tail])


def _short_socket(workdir: Path) -> Path:
    """Socket path for ``workdir``, or one in a short /tmp dir when the workdir path is too long for AF_UNIX."""
    sock = workdir / "mysqld.sock"
    if len(str(sock)) <= MAX_SOCKET_PATH:
        return sock
    short = Path(tempfile.mkdtemp(prefix="isb-", dir="/tmp"))
    return short / "mysqld.sock"


# ---------------------------------------------------------------------------------------------------------------
# the server


@dataclass
class Server:
    """A running (or stopped) test server; see :func:`start_server`."""

    kind: str
    flavor: str
    datadir: Path
    socket: Path
    workdir: Path
    pid: int
    options: list[str] = field(default_factory=list)
    version: str = ""
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def error_log(self) -> Path:
        return self.workdir / "error.log"

    @property
    def server_binary(self) -> Path:
        """An executable that behaves like this flavour's mysqld/mariadbd (chroot kinds: a wrapper script)."""
        kind = KINDS[self.kind]
        if kind.wrapper is None:
            return Path(kind.server)
        return WRAPPERS / kind.wrapper

    @property
    def backup_tool(self) -> Path | None:
        """The flavour's own ``mariadb-backup`` of the server's version (a wrapper for the chroot), or None (MySQL)."""
        tool = KINDS[self.kind].backup_tool
        if tool is None:
            return None
        return Path(tool) if tool.startswith("/") else WRAPPERS / tool

    @property
    def root(self) -> Path | None:
        """The chroot directory the server runs in, or None on the host."""
        return KINDS[self.kind].root

    def connect(self, database: str | None = None, **kwargs: Any) -> pymysql.connections.Connection:
        """A new pymysql connection as root over the unix socket, autocommit on."""
        args: dict[str, Any] = {
            "unix_socket": str(self.socket),
            "user": "root",
            "password": "",
            "autocommit": True,
            "connect_timeout": 10,
        }
        if database is not None:
            args["database"] = database
        args.update(kwargs)
        return pymysql.connect(**args)

    def query(self, sql: str, args: Any = None) -> list[tuple]:
        """Run one statement on a fresh connection and return all rows."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def execute(self, sql: str, args: Any = None) -> None:
        """Run one statement on a fresh connection, ignoring any result."""
        self.query(sql, args)

    def execute_script(self, statements: Sequence[str], database: str | None = None) -> None:
        """Run several statements in order on one connection."""
        conn = self.connect(database=database)
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
        finally:
            conn.close()

    def status(self, name: str) -> int:
        """One numeric ``SHOW GLOBAL STATUS`` value."""
        return int(self.query(f"SHOW GLOBAL STATUS LIKE '{name}'")[0][1])

    def flush_dirty(self, timeout: float = 60.0) -> None:
        """Have the server write its dirty pages and wait for the checkpoint to pass the LSN of now, so changes are
        in the data files (and in a backup's pages), not only in redo. A new MariaDB .ibd's page 0 stays all zero on
        disk until this happens (it is written lazily)."""
        mysql = self.flavor == "mysql"
        lsn = self.status("Innodb_redo_log_current_lsn" if mysql else "Innodb_lsn_current")
        old = self.query("SELECT @@innodb_max_dirty_pages_pct")[0][0]
        self.execute("SET GLOBAL innodb_max_dirty_pages_pct = 0")
        try:
            deadline = time.monotonic() + timeout
            while (self.status("Innodb_buffer_pool_pages_dirty") > 0
                   or self.status("Innodb_redo_log_checkpoint_lsn" if mysql else "Innodb_lsn_last_checkpoint") < lsn):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.kind}: dirty pages not flushed, or the checkpoint did not pass "
                                         f"LSN {lsn}, within {timeout} s")
                time.sleep(0.2)
        finally:
            self.execute(f"SET GLOBAL innodb_max_dirty_pages_pct = {float(old)}")

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return _alive(self.pid)

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=0.2)
                    return True
                except subprocess.TimeoutExpired:
                    continue
            if not _alive(self.pid):
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 120.0) -> None:
        """Clean shutdown (SIGTERM, as ``mysqladmin shutdown`` does); SIGKILL if it hangs past ``timeout``."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if not self._wait_exit(timeout):
                self.kill()
                raise SandboxError(f"{self.kind} did not shut down in {timeout}s; killed\n{_tail(self.error_log)}")
        _forget(self)
        self._drop_socket_dir()

    def kill(self) -> None:
        """SIGKILL the server: a crash, leaving the datadir as a crashed server would."""
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait_exit(30)
        _forget(self)

    def _drop_socket_dir(self) -> None:
        if self.socket.parent.name.startswith("isb-") and not self.running():
            shutil.rmtree(self.socket.parent, ignore_errors=True)

    def restart(self, options: Sequence[str] | None = None) -> Server:
        """Stop (cleanly) and start again on the same datadir and socket; updates and returns this object."""
        self.stop()
        return self.start_again(options)

    def start_again(self, options: Sequence[str] | None = None) -> Server:
        """Start again on the same datadir and socket after :meth:`stop` or :meth:`kill` (crash recovery runs)."""
        if self.running():
            raise SandboxError(f"{self.kind} server pid {self.pid} is still running")
        new = start_server(
            self.kind,
            self.workdir,
            datadir=self.datadir,
            initialize=False,
            options=list(self.options if options is None else options),
            socket=self.socket,
        )
        _forget(new)
        self.pid, self._proc, self.version, self.options = new.pid, new._proc, new.version, new.options
        _LIVE[self.pid] = self
        return self

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "flavor": self.flavor,
            "datadir": str(self.datadir),
            "socket": str(self.socket),
            "workdir": str(self.workdir),
            "pid": self.pid,
            "options": self.options,
            "version": self.version,
            "server_binary": str(self.server_binary),
        }


# Servers started by this process that are still up: stopped at interpreter exit so a failing test run
# does not leave mysqld processes behind (the CLI detaches its servers on purpose).
_LIVE: dict[int, Server] = {}


def _forget(server: Server) -> None:
    _LIVE.pop(server.pid, None)


_OWNER_PID = os.getpid()


@atexit.register
def _stop_leftovers() -> None:
    if os.getpid() != _OWNER_PID:  # a forked child exiting must not stop its parent's servers
        return
    for server in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            server.stop(timeout=60)


def _tmpdir(workdir: Path) -> Path:
    """A private tmpdir: a starting server deletes every ``#sql*`` file in its tmpdir, so servers sharing /tmp
    destroy each other's temporary tables (seen: concurrent mariadb-install-db runs failing with ERROR 1051)."""
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def server_path(kind: Kind, path: Path) -> Path:
    """The path a chroot server sees for a host ``path``: ``ROOT/x`` is ``/x`` inside (a datadir kept in the chroot,
    like a container's volume, is at another path for the server than for the host); /tmp is the same for both."""
    if kind.root is not None and path.is_relative_to(kind.root):
        return Path("/") / path.relative_to(kind.root)
    return path


def _base_options(kind: Kind, datadir: Path, workdir: Path) -> list[str]:
    opts = [
        "--no-defaults",
        "--user=root",
        f"--datadir={server_path(kind, datadir)}",
        f"--tmpdir={_tmpdir(workdir)}",
        f"--innodb-buffer-pool-size={DEFAULT_BUFFER_POOL}",
        "--skip-name-resolve",
    ]
    if kind.flavor == "mysql":
        opts += ["--secure-file-priv=", "--mysqlx=OFF", "--performance-schema=OFF"]
    else:
        opts += ["--performance-schema=OFF"]
    return opts


def initialize_datadir(kind_name: str, datadir: Path, workdir: Path, options: Sequence[str] = ()) -> None:
    """Create a fresh system datadir with the flavour's own tool (root@localhost, empty password)."""
    kind = KINDS[kind_name]
    datadir.mkdir(parents=True, exist_ok=True)
    if any(datadir.iterdir()):
        raise SandboxError(f"refusing to initialize non-empty datadir {datadir}")
    log_path = workdir / "initialize.log"
    if kind.flavor == "mysql":
        argv = [kind.server, *_base_options(kind, datadir, workdir), "--initialize-insecure",
                f"--log-error={log_path}", *options]
    else:
        argv = [
            "/usr/bin/mariadb-install-db",
            "--no-defaults",
            "--user=root",
            f"--datadir={server_path(kind, datadir)}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            f"--tmpdir={_tmpdir(workdir)}",
            f"--innodb-buffer-pool-size={DEFAULT_BUFFER_POOL}",
            *options,
        ]
        if kind.root is not None:
            argv.insert(1, "--force")  # inside the chroot the hostname does not resolve
    with open(workdir / "initialize.out", "wb") as out:
        res = subprocess.run(_in_root(kind, argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             check=False, timeout=600, env=_env(kind))
    if res.returncode != 0:
        raise SandboxError(
            f"initializing {kind_name} datadir {datadir} failed (exit {res.returncode}):\n"
            f"{_tail(workdir / 'initialize.out')}\n{_tail(log_path)}"
        )


def start_server(
    kind: str,
    workdir: Path | str,
    datadir: Path | str | None = None,
    initialize: bool | None = None,
    options: Sequence[str] = (),
    socket: Path | str | None = None,
    timeout: float = 180.0,
) -> Server:
    """Start a real server of ``kind`` with files under ``workdir``; returns once it accepts connections.

    Args:
        kind: "mariadb10", "mysql9" or "mariadb11".
        workdir: scratch directory (under /tmp for chroot kinds); holds error.log, the socket and, by default,
            the datadir ``workdir/data``.
        datadir: run on this datadir instead (e.g. a restored backup).
        initialize: create a fresh datadir first; default: only if the datadir is missing or empty.
        options: extra server options, e.g. ``["--innodb-log-file-size=8M"]`` (MariaDB) or
            ``["--innodb-redo-log-capacity=8M"]`` (MySQL); also passed when initializing.
        socket: socket path (default ``workdir/mysqld.sock``, or a short /tmp path if that is too long).
        timeout: seconds to wait for the server to accept a connection.

    Raises:
        SandboxError: with the tail of the error log, if the server cannot be initialized or started.
    """
    if kind not in KINDS:
        raise SandboxError(f"unknown server kind {kind!r}; known: {', '.join(KINDS)}")
    k = KINDS[kind]
    workdir = Path(workdir).resolve()
    datadir = (workdir / "data") if datadir is None else Path(datadir).resolve()
    if k.root is not None:
        if not str(workdir).startswith("/tmp/"):
            raise SandboxError(f"{kind} runs in a chroot that only shares /tmp: {workdir} must be under /tmp")
        if not (str(datadir).startswith("/tmp/") or datadir.is_relative_to(k.root)):
            raise SandboxError(f"{kind} runs in a chroot: its datadir {datadir} must be under /tmp (the same path "
                               f"for the server) or under {k.root} (another path for the server, like a container)")
    workdir.mkdir(parents=True, exist_ok=True)
    if initialize is None:
        initialize = not datadir.exists() or not any(datadir.iterdir())
    if initialize:
        initialize_datadir(kind, datadir, workdir, options)
    elif not datadir.is_dir():
        raise SandboxError(f"datadir {datadir} does not exist")

    sock = Path(socket) if socket is not None else _short_socket(workdir)
    sock.parent.mkdir(parents=True, exist_ok=True)
    if sock.exists():
        sock.unlink()
    error_log = workdir / "error.log"
    argv = [
        k.server,
        *_base_options(k, datadir, workdir),
        f"--socket={sock}",
        "--skip-networking",
        f"--pid-file={workdir / 'mysqld.pid'}",
        f"--log-error={error_log}",
        *options,
    ]
    log_offset = error_log.stat().st_size if error_log.exists() else 0
    with open(workdir / "mysqld.out", "ab") as out:
        proc = subprocess.Popen(
            _in_root(k, argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(k),
            start_new_session=True,  # a ^C at the terminal must not crash the server mid-test
        )
    server = Server(kind, k.flavor, datadir, sock, workdir, proc.pid, list(options), _proc=proc)
    _LIVE[proc.pid] = server
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        if proc.poll() is not None:
            _forget(server)
            raise SandboxError(
                f"{kind} server exited with code {proc.returncode} during startup; error log {error_log}:\n"
                f"{_log_since(error_log, log_offset)}"
            )
        if sock.exists():
            try:
                server.version = server.query("SELECT VERSION()")[0][0]
                break
            except pymysql.MySQLError as exc:
                last = exc
        if time.monotonic() > deadline:
            server.kill()
            raise SandboxError(
                f"{kind} server did not accept connections on {sock} within {timeout}s ({last}); "
                f"error log {error_log}:\n{_log_since(error_log, log_offset)}"
            )
        time.sleep(0.2)
    (workdir / STATE_FILE).write_text(json.dumps(server.state(), indent=2) + "\n")
    return server


def _log_since(path: Path, offset: int, lines: int = 25) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return f"(no {path})"
    return _errors_and_tail(text, lines)


def attach(workdir: Path | str) -> Server:
    """The Server described by ``workdir/sandbox.json`` (written by :func:`start_server`), e.g. started by the CLI."""
    workdir = Path(workdir).resolve()
    try:
        state = json.loads((workdir / STATE_FILE).read_text())
    except FileNotFoundError:
        raise SandboxError(f"no sandbox server recorded in {workdir}") from None
    return Server(
        kind=state["kind"],
        flavor=state["flavor"],
        datadir=Path(state["datadir"]),
        socket=Path(state["socket"]),
        workdir=Path(state["workdir"]),
        pid=int(state["pid"]),
        options=list(state.get("options", [])),
        version=state.get("version", ""),
    )


def client_argv(server: Server) -> list[str]:
    """argv prefix for the host's ``mariadb`` command-line client talking to ``server``."""
    return [shutil.which("mariadb") or "mariadb", "--no-defaults", "-uroot", f"--socket={server.socket}"]


# ---------------------------------------------------------------------------------------------------------------
# sample data

SAMPLE_SCHEMA = "sample"
# table -> number of rows load_sample_schema() puts in it; tests compare a restored copy against these.
SAMPLE_ROWS: dict[str, int] = {
    "t_plain": 2000,
    "t_indexed": 1000,
    "t_compressed": 1000,
    "t_blob": 20,
    "t_partitioned": 1000,
    "t_myisam": 200,
}
_SAMPLE_DDL = [
    "CREATE TABLE t_plain (id INT UNSIGNED NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL,"
    " payload VARBINARY(255) NOT NULL, amount DECIMAL(12,2) NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE t_indexed (id INT UNSIGNED NOT NULL PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL,"
    " KEY k_idx (k), KEY c_idx (c(16))) ENGINE=InnoDB",
    "CREATE TABLE t_compressed (id INT UNSIGNED NOT NULL PRIMARY KEY, doc TEXT NOT NULL) ENGINE=InnoDB"
    " {compressed}",
    # 40 KB values are stored off-page (BLOB pages), a path a page copier must handle.
    "CREATE TABLE t_blob (id INT UNSIGNED NOT NULL PRIMARY KEY, data LONGBLOB NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE t_partitioned (id INT UNSIGNED NOT NULL PRIMARY KEY, v VARCHAR(32) NOT NULL) ENGINE=InnoDB"
    " PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (250), PARTITION p1 VALUES LESS THAN (500),"
    " PARTITION p2 VALUES LESS THAN (750), PARTITION p3 VALUES LESS THAN MAXVALUE)",
    "CREATE TABLE t_myisam (id INT UNSIGNED NOT NULL PRIMARY KEY, note VARCHAR(64) NOT NULL) ENGINE=MyISAM",
]


def _sample_rows(table: str) -> tuple[str, list[tuple]]:
    """Deterministic rows for ``table`` (same bytes on every run and flavour)."""
    n = SAMPLE_ROWS[table]
    if table == "t_plain":
        return ("INSERT INTO t_plain VALUES (%s,%s,%s,%s)",
                [(i, f"name-{i}", hashlib.sha256(b"%d" % i).digest() * 4, f"{i * 7 % 100000}.{i % 100:02d}")
                 for i in range(1, n + 1)])
    if table == "t_indexed":
        return ("INSERT INTO t_indexed VALUES (%s,%s,%s)",
                [(i, (i * 7919) % 997, f"c-{i:06d}-" + "x" * (i % 100)) for i in range(1, n + 1)])
    if table == "t_compressed":
        return ("INSERT INTO t_compressed VALUES (%s,%s)",
                [(i, f"document {i} " + "lorem ipsum dolor sit amet " * (i % 40 + 1)) for i in range(1, n + 1)])
    if table == "t_blob":
        return ("INSERT INTO t_blob VALUES (%s,%s)",
                [(i, hashlib.sha256(b"blob%d" % i).digest() * 1280) for i in range(1, n + 1)])
    if table == "t_partitioned":
        return ("INSERT INTO t_partitioned VALUES (%s,%s)", [(i, f"part-{i}") for i in range(1, n + 1)])
    if table == "t_myisam":
        return ("INSERT INTO t_myisam VALUES (%s,%s)", [(i, f"myisam-{i}") for i in range(1, n + 1)])
    raise KeyError(table)


def _insert(cur: Any, sql: str, rows: list[tuple], batch: int = 200) -> None:
    for i in range(0, len(rows), batch):
        cur.executemany(sql, rows[i:i + batch])


def _compressed_clause(page_size: int) -> str:
    """ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8 where the page size allows it (KEY_BLOCK_SIZE <= page size; no
    compression at all with 32k/64k pages, where the table stays DYNAMIC)."""
    if page_size > 16384:
        return "ROW_FORMAT=DYNAMIC"
    return f"ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE={min(8, page_size // 1024)}"


def load_sample_schema(server: Server, schema: str = SAMPLE_SCHEMA) -> None:
    """(Re)create ``schema`` with the sample tables: plain, secondary-indexed, COMPRESSED (KEY_BLOCK_SIZE=8, or
    less/none for small/large pages), off-page BLOB and partitioned InnoDB tables and one MyISAM table, a few
    thousand rows in all (under a second)."""
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{schema}`")
            cur.execute(f"CREATE DATABASE `{schema}`")
            cur.execute(f"USE `{schema}`")
            cur.execute("SELECT @@innodb_page_size")
            (page_size,) = cur.fetchone()
            for ddl in _SAMPLE_DDL:
                cur.execute(ddl.replace("{compressed}", _compressed_clause(int(page_size))))
            # InnoDB rows in one transaction (fast); MyISAM ones autocommitted, since MySQL 9's GTID consistency
            # forbids non-transactional writes inside a transaction.
            conn.begin()
            for table in SAMPLE_ROWS:
                if table != "t_myisam":
                    _insert(cur, *_sample_rows(table))
            conn.commit()
            _insert(cur, *_sample_rows("t_myisam"))
    finally:
        conn.close()


def table_checksums(server: Server, schema: str = SAMPLE_SCHEMA) -> dict[str, tuple[int, int]]:
    """``{table: (row count, CHECKSUM TABLE)}`` for every base table in ``schema``, to compare two servers'
    contents (e.g. the source and a server started on a restored backup of the same flavour)."""
    conn = server.connect(database=schema)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema=%s"
                        " AND table_type='BASE TABLE' ORDER BY table_name", (schema,))
            tables = [r[0] for r in cur.fetchall()]
            out: dict[str, tuple[int, int]] = {}
            for t in tables:
                cur.execute(f"SELECT COUNT(*) FROM `{t}`")
                count = int(cur.fetchone()[0])
                cur.execute(f"CHECKSUM TABLE `{t}` EXTENDED")
                out[t] = (count, int(cur.fetchone()[1] or 0))
            return out
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------------------------
# command line


def _cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.sandbox", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_start = sub.add_parser("start", help="start a server and leave it running")
    p_start.add_argument("kind", choices=sorted(KINDS))
    p_start.add_argument("--workdir", required=True, type=Path)
    p_start.add_argument("--datadir", type=Path, default=None)
    p_start.add_argument("--option", action="append", default=[], help="extra server option, repeatable")
    p_start.add_argument("--sample", action="store_true", help=f"load the `{SAMPLE_SCHEMA}` schema")
    for name in ("stop", "status"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", required=True, type=Path)
        if name == "stop":
            p.add_argument("--kill", action="store_true", help="SIGKILL instead of a clean shutdown")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "start":
            server = start_server(args.kind, args.workdir, datadir=args.datadir, options=args.option)
            # Detached: leave the server running after we exit.
            _forget(server)
            if args.sample:
                load_sample_schema(server)
            print(f"KIND={server.kind}")
            print(f"VERSION={server.version}")
            print(f"SOCKET={server.socket}")
            print(f"DATADIR={server.datadir}")
            print(f"PID={server.pid}")
            print(f"SERVER_BINARY={server.server_binary}")
        elif args.cmd == "stop":
            server = attach(args.workdir)
            if args.kill:
                server.kill()
            else:
                server.stop()
        else:
            server = attach(args.workdir)
            print(json.dumps({**server.state(), "running": server.running()}, indent=2))
            return 0 if server.running() else 1
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
