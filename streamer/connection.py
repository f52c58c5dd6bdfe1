"""Talking to the server being backed up: connection options, sessions, server facts, the lock protocol and the
redo log consumer. What differs between MySQL and MariaDB (lock statements, LSN queries, version checks) lives in
:mod:`innostream.families`, which builds on this module.

Connection options behave like the MySQL/MariaDB clients': ``--defaults-file`` replaces the default option files;
the ``[client]`` (MariaDB also ``[client-server]``, ``[client-mariadb]``) and ``[innostream]`` groups are read from
``/etc/my.cnf``, ``/etc/mysql/my.cnf`` and ``~/.my.cnf``; command-line options win; an option file anyone may write
is ignored with the clients' warning. Without host or socket the client default socket is used.
"""

from __future__ import annotations

import json
import os
import re
import select
import stat
import struct
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
from innostream.errors import SourceError
from innostream.flavor import Flavor
from innostream.log import log, setup_logging

#: Option files the clients read when no --defaults-file is given, in order (later ones win).
DEFAULT_OPTION_FILES = ("/etc/my.cnf", "/etc/mysql/my.cnf", "~/.my.cnf")
#: Groups we take connection options from.
OPTION_GROUPS = ("client", "client-server", "client-mariadb", "innostream")
#: Where the clients look when neither host nor socket is given (Debian's and the upstream default).
DEFAULT_SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")
#: How long lock statements may wait before the backup fails instead of hanging (seconds).
LOCK_WAIT_TIMEOUT = 300
#: wait_timeout of our sessions: the largest value both servers accept (one year).
SESSION_WAIT_TIMEOUT = 31536000
#: Longest the MySQL redo log consumer may hold the server's writers behind a backup that copies no redo (seconds;
#: ``--redo-consumer-max-lag-seconds``).
REDO_CONSUMER_MAX_LAG = 5.0
#: Redo the server may be ahead of the consumer before a standing copy counts as lagging (bytes: a few blocks, the
#: partial block the copier has not advanced past yet).
REDO_CONSUMER_SLACK = 4096


@dataclass(frozen=True)
class ConnectionOptions:
    """How to reach the server; None means "not given" so option files can fill it in."""

    user: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    socket: str | None = None
    defaults_file: str | None = None
    connect_timeout: int = 10


def _option_file_lines(path: Path, seen: set[Path]) -> Iterator[str]:
    """Lines of an option file with ``!include``/``!includedir`` expanded (like my_load_defaults)."""
    real = path.resolve()
    if real in seen or not real.is_file():
        return
    seen.add(real)
    if world_writable(real):
        # my_default.cc check_file_permissions: anyone could have put a user, password or socket there.
        log.warning("World-writable config file '%s' is ignored.", path)
        return
    try:
        text = real.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        log.warning("cannot read option file %s: %s", path, exc.strerror)
        return
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("!includedir"):
            inc = Path(line.split(None, 1)[1].strip()) if " " in line else None
            if inc and inc.is_dir():
                for child in sorted(inc.iterdir()):
                    if child.suffix == ".cnf":
                        yield from _option_file_lines(child, seen)
        elif line.startswith("!include"):
            if " " in line:
                yield from _option_file_lines(Path(line.split(None, 1)[1].strip()), seen)
        else:
            yield line


def world_writable(path: Path) -> bool:
    """A regular file others may write: the clients ignore such an option file (``check_file_permissions``)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & stat.S_IWOTH)


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    # An unquoted value ends at an inline comment.
    return re.split(r"\s+#", value, maxsplit=1)[0].strip()


def read_option_files(defaults_file: str | None = None, groups: tuple[str, ...] = OPTION_GROUPS) -> dict[str, str]:
    """Read ``groups`` from the option files the clients would read; later files and lines win.

    Keys are normalised to underscores (``default-character-set`` == ``default_character_set``).

    Raises:
        SourceError: an explicit ``--defaults-file`` does not exist.
    """
    if defaults_file is not None:
        path = Path(defaults_file).expanduser()
        if not path.is_file():
            raise SourceError("option file not found", file=str(path))
        paths = [path]
    else:
        paths = [Path(p).expanduser() for p in DEFAULT_OPTION_FILES]
    out: dict[str, str] = {}
    for path in paths:
        group: str | None = None
        for line in _option_file_lines(path, set()):
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                group = line[1:-1].strip().lower()
                continue
            if group not in groups:
                continue
            key, eq, value = line.partition("=")
            out[key.strip().replace("-", "_")] = _unquote(value) if eq else ""
    return out


def resolve_options(opts: ConnectionOptions) -> dict[str, Any]:
    """Merge command line and option files into pymysql ``connect`` arguments."""
    files = read_option_files(opts.defaults_file)
    user = opts.user if opts.user is not None else files.get("user") or os.environ.get("USER") or "root"
    password = opts.password if opts.password is not None else files.get("password", "")
    host = opts.host if opts.host is not None else files.get("host")
    port_text = opts.port if opts.port is not None else files.get("port")
    socket = opts.socket if opts.socket is not None else files.get("socket")
    args: dict[str, Any] = {
        "user": user,
        "password": password or "",
        "autocommit": True,
        "connect_timeout": opts.connect_timeout,
        "charset": "utf8mb4",
    }
    # Like the clients: "localhost" (or nothing) means the unix socket; a port alone does not change that.
    if socket or host in (None, "", "localhost"):
        if not socket:
            socket = next((s for s in DEFAULT_SOCKETS if Path(s).exists()), None)
        if socket:
            args["unix_socket"] = socket
        else:
            args["host"] = "localhost"
    else:
        args["host"] = host
        if port_text:
            args["port"] = int(port_text)
    return args


def describe(args: dict[str, Any]) -> str:
    """Where we connect, for messages (never the password)."""
    if "unix_socket" in args:
        return f"socket {args['unix_socket']} as {args['user']}"
    return f"{args.get('host')}:{args.get('port', 3306)} as {args['user']}"


def connect(args: dict[str, Any]) -> pymysql.connections.Connection:
    """Open one connection; a failure becomes a one-line :class:`SourceError`."""
    try:
        return pymysql.connect(**args)
    except pymysql.err.MySQLError as exc:
        raise SourceError(f"cannot connect to the server ({describe(args)}): {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, pymysql.err.MySQLError) and len(exc.args) >= 2:
        return f"{exc.args[1]} ({exc.args[0]})"
    return str(exc)


class Session:
    """One server connection with helpers that turn driver errors into :class:`SourceError`.

    pymysql connections are not thread-safe; a lock serialises the (rare) cross-thread uses such as the redo
    consumer's ``advance`` from the log-copying thread.
    """

    def __init__(self, args: dict[str, Any], purpose: str) -> None:
        self.args = args
        self.purpose = purpose
        self.conn = connect(args)
        self._lock = threading.Lock()
        # A backup may take hours, and the redo consumer's session stays idle while the server is; the server
        # must not close it (its locks or registration would silently go away).
        self.execute(f"SET SESSION wait_timeout = {SESSION_WAIT_TIMEOUT}")

    def query(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                with self.conn.cursor() as cur:
                    cur.execute(sql, params)
                    return list(cur.fetchall())
            except pymysql.err.MySQLError as exc:
                raise SourceError(f"{sql.split()[0]} failed on the {self.purpose} connection: {_reason(exc)}",
                                  hint=f"statement: {sql}") from None

    def execute(self, sql: str, params: Any = None) -> None:
        self.query(sql, params)

    def value(self, sql: str, params: Any = None) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows and rows[0] else None

    def close(self) -> None:
        with suppress(Exception):
            self.conn.close()

    def kill(self) -> None:
        """End this session on the server from a fresh connection.

        After Ctrl-C interrupted a statement (say, a lock request still waiting) the connection is unusable, and
        the server would only notice the closed socket when that statement ends: until then its lock request
        stays queued. ``KILL CONNECTION`` ends it now, and with it every lock and registration it holds.
        """
        try:
            thread_id = self.conn.thread_id()  # type: ignore[no-untyped-call]  # pymysql stub leaves it untyped
        except Exception:  # never connected
            return
        self.close()
        try:
            other = connect(self.args)
        except SourceError as exc:
            log.warning("could not end the %s session %s on the server: %s", self.purpose, thread_id, exc)
            return
        try:
            with other.cursor() as cur:
                cur.execute(f"KILL CONNECTION {int(thread_id)}")
        except pymysql.err.MySQLError:
            pass  # already gone: nothing left to release
        finally:
            other.close()


#: Server errors that mean "this user may not do that" (ER_DBACCESS_DENIED_ERROR, ER_TABLEACCESS_DENIED_ERROR,
#: ER_SPECIFIC_ACCESS_DENIED_ERROR, ER_COLUMNACCESS_DENIED_ERROR, ER_PROCACCESS_DENIED_ERROR).
ACCESS_DENIED_ERRORS = frozenset({1044, 1142, 1227, 1143, 1370})


@dataclass(frozen=True)
class PrivilegeProbe:
    """A harmless statement that fails with an access-denied error exactly when ``privilege`` is missing; ``needed``
    says what of the backup needs it (for the message)."""

    privilege: str
    sql: str
    needed: str


def check_privileges(session: Session, probes: Iterable[PrivilegeProbe]) -> None:
    """Run every probe before anything is copied; raise one :class:`SourceError` naming every missing privilege.

    A probe runs the statement itself (or a harmless one that needs the same privilege), so roles, wildcard
    hosts and ``ALL PRIVILEGES`` count exactly as the server counts them (no SHOW GRANTS parsing).
    """
    missing: dict[str, list[str]] = {}
    for probe in probes:
        with session._lock:
            try:
                with session.conn.cursor() as cur:
                    cur.execute(probe.sql)
                    cur.fetchall()
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args else None
                if code not in ACCESS_DENIED_ERRORS:
                    raise SourceError(f"{probe.sql.split()[0]} failed on the {session.purpose} connection: "
                                      f"{_reason(exc)}", hint=f"statement: {probe.sql}") from None
                missing.setdefault(probe.privilege, []).append(probe.needed)
    if missing:
        user = session.value("SELECT CURRENT_USER()")
        what = "; ".join(f"{priv} (for {', '.join(needs)})" for priv, needs in missing.items())
        raise SourceError(f"the backup user {user} lacks {what}; nothing was copied",
                          hint=f"GRANT {', '.join(missing)} ON *.* TO the backup user")


def parse_version(text: str) -> tuple[int, int, int]:
    """``8.0.36-log`` / ``10.11.19-MariaDB-0+deb12u1-log`` -> (major, minor, patch)."""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise SourceError(f"cannot parse server version {text!r}")
    return int(m[1]), int(m[2]), int(m[3])


@dataclass(frozen=True)
class ServerFacts:
    """What the backup needs to know about the server, read once at the start."""

    flavor: Flavor
    version: str  # SELECT VERSION()
    version_tuple: tuple[int, int, int]
    datadir: Path
    data_home_dir: Path
    log_dir: Path
    undo_dir: Path
    variables: dict[str, str] = field(default_factory=dict)

    def var(self, name: str, default: str = "") -> str:
        value = self.variables.get(name)
        return default if value is None else value


#: Variables we read (missing ones are simply absent: not every flavour has every variable).
_VARIABLES = (
    "datadir", "innodb_data_home_dir", "innodb_data_file_path", "innodb_log_group_home_dir",
    "innodb_undo_directory", "innodb_undo_tablespaces", "innodb_page_size", "innodb_checksum_algorithm",
    "innodb_log_file_size", "innodb_redo_log_capacity", "innodb_log_checksums", "innodb_compression_level",
    "innodb_redo_log_encrypt", "innodb_undo_log_encrypt", "innodb_encrypt_log", "innodb_buffer_pool_filename",
    "server_id", "server_uuid", "log_bin", "log_bin_basename", "gtid_mode", "innodb_directories",
    "innodb_file_per_table", "version_comment", "innodb_log_files_in_group",
)


def query_server_facts(session: Session) -> ServerFacts:
    """Read version and paths; relative InnoDB paths are relative to the datadir, as in the server.

    Only what every family has: :func:`innostream.families.read_server_facts` adds the family's checks.
    """
    version = str(session.value("SELECT VERSION()"))
    vt = parse_version(version)
    placeholders = ",".join(["%s"] * len(_VARIABLES))
    rows = session.query(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})", _VARIABLES)
    variables = {str(k).lower(): ("" if v is None else str(v)) for k, v in rows}
    datadir = Path(variables.get("datadir") or ".")

    def under_datadir(value: str | None) -> Path:
        return (datadir / value).resolve() if value else datadir.resolve()

    return ServerFacts(
        flavor=Flavor.of_version(version),
        version=version,
        version_tuple=vt,
        datadir=datadir.resolve(),
        data_home_dir=under_datadir(variables.get("innodb_data_home_dir")),
        log_dir=under_datadir(variables.get("innodb_log_group_home_dir")),
        undo_dir=under_datadir(variables.get("innodb_undo_directory")),
        variables=variables,
    )


# --- LSNs and binlog ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogStatus:
    """The server's redo position and binlog coordinates at one instant."""

    lsn: int
    checkpoint_lsn: int
    flushed_lsn: int = 0
    binlog_file: str = ""
    binlog_pos: int = 0
    gtid: str = ""


# --- locks --------------------------------------------------------------------------------------------------------


class BackupLocks(ABC):
    """The DDL lock held for the whole copy and the short commit block at the end, released on any exit.

    The statements are the family's (one subclass each in :mod:`innostream.families`); this class keeps the state
    and the order. ``release()`` is idempotent and safe after errors; closing the connection would release the
    locks too, so a crash of this process never leaves the server locked.
    """

    def __init__(self, session: Session, *, enabled: bool = True) -> None:
        self.session = session
        self.enabled = enabled
        self.ddl_locked = False
        self.read_locked = False
        #: Whether the last :meth:`block_commits` really stopped commits (it may not, see the family's docs).
        self.commits_blocked = False

    def lock_ddl(self) -> None:
        """Block DDL (not DML) until ``release``: tables cannot be created, dropped or renamed under the copy."""
        if not self.enabled:
            return
        self.session.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")
        self._lock_ddl()

    def begin(self) -> None:
        """``--lock-ddl=reduced``: what the family holds during the copy instead of the DDL block (MariaDB: ``BACKUP
        STAGE START``, MySQL: nothing); :meth:`lock_ddl` follows at the end of the InnoDB copy."""
        if not self.enabled:
            return
        self.session.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")
        self._begin()

    def _begin(self) -> None:  # noqa: B027 - a hook: most families hold nothing during a reduced-lock copy
        """Nothing by default."""

    @contextmanager
    def block_commits(self, *, need_read_lock: bool) -> Iterator[None]:
        """Briefly stop commits (and writes to non-InnoDB tables) while the end of the backup is taken.

        ``need_read_lock``: non-InnoDB tables that DML can change are copied, so a family without a commit-only
        block takes ``FLUSH TABLES WITH READ LOCK``.
        """
        self.commits_blocked = False
        if self.enabled:
            self._block_commits(need_read_lock)
        yield

    def release(self) -> None:
        """Release everything we hold; errors here are logged, not raised (we may be unwinding already)."""
        try:
            if self.read_locked:
                self.session.execute("UNLOCK TABLES")
                self.read_locked = False
                log.info("All tables unlocked")
            if self.ddl_locked:
                self._unlock_ddl()
                self.ddl_locked = False
        except Exception as exc:  # cleaning up; ending the session releases them too
            log.warning("releasing backup locks failed (%s); ending the session to release them", exc)
            self.session.kill()

    @abstractmethod
    def _lock_ddl(self) -> None:
        """Take the DDL lock and set ``ddl_locked`` once the server holds anything to release."""

    @abstractmethod
    def _block_commits(self, need_read_lock: bool) -> None:
        """Stop commits; set ``commits_blocked`` (and ``read_locked`` for FLUSH TABLES WITH READ LOCK)."""

    @abstractmethod
    def _unlock_ddl(self) -> None:
        """End what :meth:`_lock_ddl` took."""


class RedoConsumer:
    """MySQL's redo log consumer: while registered, the server does not overwrite redo we have not copied, and
    stalls its writers instead. A backup must never hold them longer than ``max_lag`` seconds.

    Registration belongs to a session (``innodb_redo_log_consumer_*`` UDFs, MySQL 8.0.30+, BACKUP_ADMIN), and it
    must not depend on this process running: a backup that is stopped (Ctrl-Z, SIGSTOP, a frozen container) or
    whose log copier is stuck cannot deregister itself. So the session lives in a small watchdog process of its
    own (its own session id, so a terminal's Ctrl-Z does not stop it too). The log copier sends it each copied LSN;
    when that LSN has not moved for ``max_lag`` seconds while the server has written redo past it, the watchdog
    deregisters, says so on stderr, and the backup goes on without the guarantee (the log copier then fails with
    :class:`RedoOverwritten` if the server overwrote redo not yet copied). The watchdog also deregisters and exits
    when this process dies (its stdin closes). Its start point is the checkpoint at registration, so it must be
    registered before the log copier reads its start checkpoint.
    """

    def __init__(self, args: dict[str, Any], max_lag: float = REDO_CONSUMER_MAX_LAG) -> None:
        self.registered = False
        self.released = ""  # why the watchdog let go, once it did
        self.advanced_to = 0
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "innostream.connection", "redo-consumer-watchdog"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, close_fds=True)
        assert self._proc.stdin is not None
        assert self._proc.stdout is not None
        self._in, self._out = self._proc.stdin, self._proc.stdout
        try:
            self._in.write(json.dumps({"args": args, "max_lag": max_lag}).encode() + b"\n")
            self._in.flush()
            reply = self._out.readline().decode(errors="replace").rstrip("\n")
        except OSError:
            reply = ""
        if reply != "OK":
            self._end_process()
            message = reply[4:] if reply.startswith("ERR ") else "the redo consumer watchdog did not start"
            raise SourceError(message, hint="the backup user needs BACKUP_ADMIN; or another consumer is registered")
        self.registered = True
        os.set_blocking(self._in.fileno(), False)
        self._reader = threading.Thread(target=self._read_events, name="redo-consumer", daemon=True)
        self._reader.start()
        log.info("Registered as redo log consumer: the server will not overwrite redo not yet copied (for at most "
                 "%g s of lag)", max_lag)

    def _read_events(self) -> None:
        with suppress(OSError, ValueError):  # closed under us at the end
            for raw in self._out:
                line = raw.decode(errors="replace").rstrip("\n")
                if line.startswith("RELEASED "):
                    self.released = line[9:]
                    self.registered = False

    def _send(self, line: str) -> None:
        """One line to the watchdog, never blocking the log copier: the pipe is non-blocking and a line is far below
        PIPE_BUF (written whole or not at all); a line dropped while the watchdog is busy is superseded by the
        next LSN."""
        with self._lock, suppress(OSError, ValueError):
            os.write(self._in.fileno(), line.encode() + b"\n")

    def advance(self, lsn: int) -> None:
        """Tell the server redo up to ``lsn`` is copied (called from the log-copying thread)."""
        if lsn <= self.advanced_to:
            return
        self.advanced_to = lsn
        if self.registered:
            self._send(f"A {int(lsn)}")

    def _end_process(self) -> None:
        with suppress(OSError, ValueError):
            self._in.close()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()  # our own child; the server ends its session (and registration) with it
            self._proc.wait()
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(timeout=5)  # it ends at the child's EOF
        with suppress(OSError, ValueError):
            self._out.close()

    def close(self) -> None:
        """Deregister (idempotent): the watchdog unregisters on its stdin's end and exits."""
        was = self.registered
        self.registered = False
        if self._proc.poll() is None:
            self._end_process()  # the end of its stdin: it unregisters and exits
            if was and self._proc.returncode == 0:
                log.info("Unregistered the redo log consumer")
        if self._proc.returncode not in (0, None):
            log.warning("the redo log consumer watchdog exited with status %s; its session ended, which "
                        "unregisters it", self._proc.returncode)


def _consumer_watchdog() -> int:
    """The watchdog process of :class:`RedoConsumer`: stdin ``{"args":..., "max_lag":...}``, then ``A <lsn>``
    lines until it ends; stdout ``OK``/``ERR <message>``, later ``RELEASED <why>``."""
    setup_logging(0)
    first = sys.stdin.buffer.readline()
    try:
        conf = json.loads(first)
        session = Session(conf["args"], "redo consumer")
        rc = session.value("SELECT innodb_redo_log_consumer_register()")
        if rc != 0:
            raise SourceError(f"innodb_redo_log_consumer_register() returned {rc}")
    except (ValueError, KeyError, SourceError) as exc:
        sys.stdout.write(f"ERR {exc}\n")
        sys.stdout.flush()
        return 1
    max_lag = float(conf["max_lag"])
    sys.stdout.write("OK\n")
    sys.stdout.flush()
    fd = sys.stdin.fileno()
    pending = b""
    advanced = 0
    moved = time.monotonic()
    registered = True
    last_check = 0.0
    while True:
        ready, _, _ = select.select([fd], [], [], 0.25)
        if ready:
            data = os.read(fd, 65536)
            if not data:
                break  # the backup ended or died
            pending += data
            *lines, pending = pending.split(b"\n")
            lsns = [int(line[2:]) for line in lines if line.startswith(b"A ")]
            if lsns and max(lsns) > advanced:
                advanced = max(lsns)
                moved = time.monotonic()
                if registered:
                    try:
                        rc = session.value("SELECT innodb_redo_log_consumer_advance(%s)", (advanced,))
                    except SourceError:
                        break  # the server or our session went away: nothing left to hold
                    if rc != 0:
                        log.debug("innodb_redo_log_consumer_advance(%d) returned %s", advanced, rc)
        now = time.monotonic()
        if registered and now - moved >= max_lag and now - last_check >= 0.5:
            last_check = now
            try:
                current = int(session.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_current_lsn'")[0][1])
            except SourceError:
                break  # the server or our session went away: nothing left to hold
            if current > max(advanced, 1) + REDO_CONSUMER_SLACK:
                with suppress(SourceError):
                    session.value("SELECT innodb_redo_log_consumer_unregister()")
                registered = False
                why = (f"the backup copied no redo for {now - moved:.0f} s (it is stopped, or its log copier is "
                       f"stuck) while the server wrote {current - advanced} bytes of redo past it")
                log.warning("WARNING: unregistered the redo log consumer: %s; the server's writers are not held "
                            "back longer than --redo-consumer-max-lag-seconds=%g. The backup goes on and fails "
                            "(exit 5) if the server overwrites redo not yet copied", why, max_lag)
                with suppress(OSError):
                    sys.stdout.write(f"RELEASED {why}\n")
                    sys.stdout.flush()
    if registered:
        with suppress(SourceError):
            session.value("SELECT innodb_redo_log_consumer_unregister()")
    session.close()
    return 0


if __name__ == "__main__" and sys.argv[1:] == ["redo-consumer-watchdog"]:
    sys.exit(_consumer_watchdog())


# --- MySQL page tracking (component_mysqlbackup) ------------------------------------------------------------------

#: component_mysqlbackup writes the changed page ids to ``<datadir>/#meb/<backupid>.idx``: 8 bytes each, the space
#: id and the page number, both big-endian (components/mysqlbackup/backup_comp_constants.h; checked on 9.7).
PAGE_TRACK_DIR = "#meb"
PAGE_TRACK_ENTRY = struct.Struct(">II")
#: More changed pages than this and the list is not worth holding (8 bytes each in the file, more in memory).
PAGE_TRACK_MAX_PAGES = 16 << 20


def page_tracking_start(session: Session) -> int | None:
    """Make sure MySQL tracks changed pages from now on (``mysqlbackup_page_track_set(1)``, which may start a new
    page group at the current LSN when tracking runs already) and return the oldest LSN the kept tracking data
    covers (``mysqlbackup_page_track_get_start_lsn()``); None when component_mysqlbackup is not installed."""
    try:
        lsn = int(session.value("SELECT mysqlbackup_page_track_set(1)"))
        if lsn > 0:
            lsn = int(session.value("SELECT mysqlbackup_page_track_get_start_lsn()"))
    except SourceError as exc:
        log.info("Page tracking unavailable: %s", exc.message)
        return None
    if lsn <= 0:
        log.info("Page tracking could not be started (status %d)", lsn)
        return None
    return lsn


def changed_pages(session: Session, datadir: Path, from_lsn: int, to_lsn: int) -> dict[int, list[int]] | None:
    """The pages MySQL saw change between ``from_lsn`` and ``to_lsn``, as ``{space_id: sorted page numbers}``; None
    (after a one-line note) when the list cannot be had or is too long to be worth it."""
    try:
        count = int(session.value("SELECT mysqlbackup_page_track_get_changed_page_count(%s, %s)",
                                  (from_lsn, to_lsn)))
        if count < 0:
            log.info("Page tracking does not cover LSN %d..%d (status %d)", from_lsn, to_lsn, count)
            return None
        if count > PAGE_TRACK_MAX_PAGES:
            log.info("Page tracking lists %d changed pages; scanning every page instead", count)
            return None
        backup_id = f"{int(time.time() * 1000)}{os.getpid()}"
        session.execute(f"SET GLOBAL mysqlbackup.backupid = '{backup_id}'")
        status = int(session.value("SELECT mysqlbackup_page_track_get_changed_pages(%s, %s)", (from_lsn, to_lsn)))
    except SourceError as exc:
        log.info("Page tracking failed: %s", exc.message)
        return None
    path = datadir / PAGE_TRACK_DIR / f"{backup_id}.idx"
    try:
        if status != 0:
            log.info("Page tracking could not list the changed pages (status %d)", status)
            return None
        try:
            data = path.read_bytes() if count else b""
        except OSError as exc:
            log.info("Page tracking's list %s cannot be read: %s", path, exc.strerror)
            return None
    finally:
        with suppress(OSError):
            path.unlink()
    if len(data) % PAGE_TRACK_ENTRY.size:
        log.info("Page tracking's list %s is cut (%d bytes)", path, len(data))
        return None
    pages: dict[int, set[int]] = {}
    for space_id, page_no in PAGE_TRACK_ENTRY.iter_unpack(data):
        pages.setdefault(space_id, set()).add(page_no)
    return {space: sorted(nos) for space, nos in pages.items()}
