"""Talking to the server being backed up: connection options, server facts, locks, LSNs, binlog position.

Connection options behave like the MySQL/MariaDB clients': ``--defaults-file`` replaces the default option files;
the ``[client]`` (MariaDB also ``[client-server]``, ``[client-mariadb]``) and ``[innostream]`` groups are read from
``/etc/my.cnf``, ``/etc/mysql/my.cnf`` and ``~/.my.cnf``; command-line options win. Without host or socket the
client default socket is used.

Locks, per flavour (what mariadb-backup and Percona XtraBackup 8 do, simplest correct form):

* MariaDB: ``BACKUP STAGE START`` + ``BACKUP STAGE BLOCK_DDL`` for the whole copy, so DDL waits and every file we
  copy keeps its name and identity; ``BACKUP STAGE BLOCK_COMMIT`` briefly at the end for the non-InnoDB files, the
  binlog position and the final LSN; ``BACKUP STAGE END``.
* MySQL: ``LOCK INSTANCE FOR BACKUP`` for the whole copy (blocks DDL, not DML); ``FLUSH TABLES WITH READ LOCK``
  briefly at the end when non-InnoDB tables exist; ``performance_schema.log_status`` gives binlog position, GTIDs
  and LSNs in one consistent read.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
from innostream.errors import SourceError
from innostream.log import log

#: Option files the clients read when no --defaults-file is given, in order (later ones win).
DEFAULT_OPTION_FILES = ("/etc/my.cnf", "/etc/mysql/my.cnf", "~/.my.cnf")
#: Groups we take connection options from.
OPTION_GROUPS = ("client", "client-server", "client-mariadb", "innostream")
#: Where the clients look when neither host nor socket is given (Debian's and the upstream default).
DEFAULT_SOCKETS = ("/run/mysqld/mysqld.sock", "/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock")
#: Oldest servers whose redo format we copy.
MIN_VERSION = {"mysql": (8, 0, 30), "mariadb": (10, 8, 0)}
#: How long lock statements may wait before the backup fails instead of hanging (seconds).
LOCK_WAIT_TIMEOUT = 300
#: wait_timeout of our sessions: the largest value both servers accept (one year).
SESSION_WAIT_TIMEOUT = 31536000
#: How long FLUSH TABLES WITH READ LOCK may wait for running statements; meanwhile all writes queue behind it.
FTWRL_WAIT_TIMEOUT = 30


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

    def query(self, sql: str, params: Any = None) -> list[tuple]:
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
            thread_id = self.conn.thread_id()
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


def parse_version(text: str) -> tuple[int, int, int]:
    """``8.0.36-log`` / ``10.11.19-MariaDB-0+deb12u1-log`` -> (major, minor, patch)."""
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise SourceError(f"cannot parse server version {text!r}")
    return int(m[1]), int(m[2]), int(m[3])


@dataclass(frozen=True)
class ServerFacts:
    """What the backup needs to know about the server, read once at the start."""

    flavor: str  # "mysql" | "mariadb"
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


def read_server_facts(session: Session) -> ServerFacts:
    """Read version and paths; relative InnoDB paths are relative to the datadir, as in the server.

    Raises:
        SourceError: the server is too old for the redo formats we copy, or is not InnoDB-capable.
    """
    version = str(session.value("SELECT VERSION()"))
    flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
    vt = parse_version(version)
    if vt < MIN_VERSION[flavor]:
        want = ".".join(map(str, MIN_VERSION[flavor]))
        raise SourceError(f"{flavor} {version} is not supported; innostream needs {flavor} {want} or newer")
    placeholders = ",".join(["%s"] * len(_VARIABLES))
    rows = session.query(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({placeholders})", _VARIABLES)
    variables = {str(k).lower(): ("" if v is None else str(v)) for k, v in rows}
    datadir = Path(variables.get("datadir") or ".")

    def under_datadir(value: str | None) -> Path:
        return (datadir / value).resolve() if value else datadir.resolve()

    if flavor == "mysql":
        rows = session.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_enabled'")
        if rows and str(rows[0][1]).upper() == "OFF":
            raise SourceError("redo logging is disabled (ALTER INSTANCE DISABLE INNODB REDO_LOG): a hot backup "
                              "cannot be made consistent", hint="ALTER INSTANCE ENABLE INNODB REDO_LOG first")
    return ServerFacts(
        flavor=flavor,
        version=version,
        version_tuple=vt,
        datadir=datadir.resolve(),
        data_home_dir=under_datadir(variables.get("innodb_data_home_dir")),
        log_dir=under_datadir(variables.get("innodb_log_group_home_dir")),
        undo_dir=under_datadir(variables.get("innodb_undo_directory")),
        variables=variables,
    )


def encryption_plugin_config(session: Session) -> list[str]:
    """MariaDB: the ``backup-my.cnf`` lines that let prepare load the server's key management plugin.

    Like mariadb-backup (encryption_plugin.cc): ``plugin_load=name=library`` (suffix dropped), ``plugin_dir``,
    every ``<name>_*`` variable, and ``innodb_encrypt_log``. Empty when no encryption plugin is active.
    """
    rows = session.query("SELECT PLUGIN_NAME, PLUGIN_LIBRARY, @@plugin_dir FROM information_schema.PLUGINS "
                         "WHERE PLUGIN_TYPE = 'ENCRYPTION' AND PLUGIN_STATUS = 'ACTIVE'")
    if not rows:
        return []
    name, library, plugin_dir = (str(v) if v is not None else "" for v in rows[0])
    load = name
    if library:
        load += "=" + re.sub(r"\.(so|dll)$", "", library)
    lines = [f"plugin_load={load}", f'plugin_dir="{plugin_dir}"']
    like = name.replace("_", "\\_") + "\\_%"
    lines += [f"{k}={v}" for k, v in session.query("SHOW GLOBAL VARIABLES LIKE %s", (like,))]
    encrypt_log = session.value("SELECT @@innodb_encrypt_log")
    lines.append(f"innodb_encrypt_log={encrypt_log}")
    return lines


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


def current_lsn(session: Session, flavor: str) -> int:
    """The server's current LSN (for the redo-lag display and the end of the copy)."""
    if flavor == "mysql":
        return int(session.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_current_lsn'")[0][1])
    return int(session.query("SHOW GLOBAL STATUS LIKE 'Innodb_lsn_current'")[0][1])


def read_log_status(session: Session, flavor: str, *, binlog: bool) -> LogStatus:
    """LSN, checkpoint and binlog coordinates; MySQL reads them consistently from ``log_status``.

    On MariaDB call this under ``BACKUP STAGE BLOCK_COMMIT`` so the binlog position and the LSN belong together.
    """
    if flavor == "mysql":
        rows = session.query("SELECT LOCAL, STORAGE_ENGINES FROM performance_schema.log_status")
        local = json.loads(rows[0][0])
        engines = json.loads(rows[0][1])
        innodb = engines.get("InnoDB", {})
        flushed = dict(session.query("SHOW GLOBAL STATUS LIKE 'Innodb_redo_log_flushed_to_disk_lsn'"))
        return LogStatus(
            lsn=int(innodb["LSN"]),
            checkpoint_lsn=int(innodb["LSN_checkpoint"]),
            flushed_lsn=int(flushed.get("Innodb_redo_log_flushed_to_disk_lsn", 0)),
            binlog_file=local.get("binary_log_file", "") if binlog else "",
            binlog_pos=int(local.get("binary_log_position", 0)) if binlog else 0,
            gtid=local.get("gtid_executed", "").replace("\n", "") if binlog else "",
        )
    status = dict(session.query("SHOW GLOBAL STATUS WHERE Variable_name IN "
                                "('Innodb_lsn_current', 'Innodb_lsn_flushed', 'Innodb_lsn_last_checkpoint')"))
    binlog_file, binlog_pos, gtid = "", 0, ""
    if binlog:
        rows = session.query("SHOW MASTER STATUS")
        if rows:
            binlog_file, binlog_pos = str(rows[0][0]), int(rows[0][1])
            gtid = str(session.value("SELECT @@GLOBAL.gtid_binlog_pos") or "")
    return LogStatus(
        lsn=int(status["Innodb_lsn_current"]),
        checkpoint_lsn=int(status["Innodb_lsn_last_checkpoint"]),
        flushed_lsn=int(status.get("Innodb_lsn_flushed", 0)),
        binlog_file=binlog_file,
        binlog_pos=binlog_pos,
        gtid=gtid,
    )


# --- locks --------------------------------------------------------------------------------------------------------


class BackupLocks:
    """The DDL lock held for the whole copy and the short commit block at the end, released on any exit.

    ``release()`` is idempotent and safe after errors; closing the connection would release the locks too, so a
    crash of this process never leaves the server locked.
    """

    def __init__(self, session: Session, flavor: str, *, enabled: bool = True) -> None:
        self.session = session
        self.flavor = flavor
        self.enabled = enabled
        self.ddl_locked = False
        self.commit_blocked = False
        self.read_locked = False
        self.commits_blocked = False

    def lock_ddl(self) -> None:
        """Block DDL (not DML) until ``release``: tables cannot be created, dropped or renamed under the copy."""
        if not self.enabled:
            return
        self.session.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")
        if self.flavor == "mariadb":
            log.info("Starting BACKUP STAGE START")
            self.session.execute("BACKUP STAGE START")
            self.ddl_locked = True
            self.session.execute("BACKUP STAGE BLOCK_DDL")
            log.info("Acquired BACKUP STAGE BLOCK_DDL: DDL waits until the backup ends")
        else:
            self.session.execute("LOCK INSTANCE FOR BACKUP")
            self.ddl_locked = True
            log.info("Executed LOCK INSTANCE FOR BACKUP: DDL waits until the backup ends")

    @contextmanager
    def block_commits(self, *, need_read_lock: bool) -> Iterator[None]:
        """Briefly stop commits (and writes to non-InnoDB tables) while the end of the backup is taken.

        MariaDB: ``BACKUP STAGE BLOCK_COMMIT``, made for exactly this. MySQL: ``FLUSH TABLES WITH READ LOCK``. On
        MySQL a DDL statement waiting for our instance lock holds the global intention lock that FTWRL needs, and
        the server resolves that cycle by failing the DDL (ER_LOCK_DEADLOCK). So when DDL is waiting, or FTWRL
        cannot get its lock within :data:`FTWRL_WAIT_TIMEOUT`, we do not block commits: the binlog position and
        LSN still come from one consistent ``log_status`` read, but the redo copy may hold a few transactions
        committed after it, and non-InnoDB tables may change while copied. That is said in a warning, and
        :attr:`commits_blocked` tells the caller.
        """
        self.commits_blocked = False
        if not self.enabled:
            yield
            return
        if self.flavor == "mariadb":
            self.session.execute("BACKUP STAGE BLOCK_COMMIT")
            self.commit_blocked = self.commits_blocked = True
            log.info("Acquired BACKUP STAGE BLOCK_COMMIT")
        elif need_read_lock:
            waiting = self.session.value(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE = 'Waiting for backup lock'")
            if waiting:
                log.warning("%s DDL statement(s) wait for the backup lock; not taking FLUSH TABLES WITH READ LOCK "
                            "(it would make them fail). The binlog position may precede transactions committed "
                            "during the last moments of the redo copy, and non-InnoDB tables may be inconsistent",
                            waiting)
            else:
                try:
                    self.session.execute(f"SET SESSION lock_wait_timeout = {FTWRL_WAIT_TIMEOUT}")
                    self.session.execute("FLUSH TABLES WITH READ LOCK")
                except SourceError as exc:
                    log.warning("FLUSH TABLES WITH READ LOCK failed (%s); continuing without blocking commits: the "
                                "binlog position may precede the last transactions in the redo copy", exc.message)
                else:
                    self.read_locked = self.commits_blocked = True
                    log.info("Executed FLUSH TABLES WITH READ LOCK")
                finally:
                    self.session.execute(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}")
        yield

    def release(self) -> None:
        """Release everything we hold; errors here are logged, not raised (we may be unwinding already)."""
        try:
            if self.read_locked:
                self.session.execute("UNLOCK TABLES")
                self.read_locked = False
                log.info("All tables unlocked")
            if self.ddl_locked:
                if self.flavor == "mariadb":
                    self.session.execute("BACKUP STAGE END")
                    log.info("Executed BACKUP STAGE END")
                else:
                    self.session.execute("UNLOCK INSTANCE")
                    log.info("Executed UNLOCK INSTANCE")
                self.ddl_locked = False
                self.commit_blocked = False
        except Exception as exc:  # cleaning up; ending the session releases them too
            log.warning("releasing backup locks failed (%s); ending the session to release them", exc)
            self.session.kill()


class RedoConsumer:
    """MySQL's redo log consumer: while registered, the server does not overwrite redo we have not copied.

    It lives on its own connection because registration belongs to the session (``innodb_redo_log_consumer_*``
    UDFs, MySQL 8.0.30+, BACKUP_ADMIN). Its start point is the checkpoint at registration, so it must be registered
    before the log copier reads its start checkpoint.
    """

    def __init__(self, args: dict[str, Any]) -> None:
        self.session = Session(args, "redo consumer")
        self.registered = False
        self.advanced_to = 0
        rc = self.session.value("SELECT innodb_redo_log_consumer_register()")
        if rc != 0:
            self.session.close()
            raise SourceError("innodb_redo_log_consumer_register() failed",
                              hint="the backup user needs BACKUP_ADMIN; or another consumer is registered")
        self.registered = True
        log.info("Registered as redo log consumer: the server will not overwrite redo not yet copied")

    def advance(self, lsn: int) -> None:
        """Tell the server redo up to ``lsn`` is copied (called from the log-copying thread)."""
        if not self.registered or lsn <= self.advanced_to:
            return
        rc = self.session.value("SELECT innodb_redo_log_consumer_advance(%s)", (int(lsn),))
        if rc == 0:
            self.advanced_to = lsn
        else:
            log.debug("innodb_redo_log_consumer_advance(%d) returned %s", lsn, rc)

    def close(self) -> None:
        """Deregister (idempotent) and close the connection, which would deregister as well."""
        if self.registered:
            try:
                self.session.value("SELECT innodb_redo_log_consumer_unregister()")
                log.info("Unregistered the redo log consumer")
            except Exception as exc:  # cleaning up; ending the session unregisters too
                log.warning("unregistering the redo log consumer failed (%s); ending its session", exc)
                self.session.kill()
            self.registered = False
        self.session.close()


def supports_redo_consumer(facts: ServerFacts) -> bool:
    """The consumer UDFs exist on MySQL 8.0.30+ (never on MariaDB, whose log has no such interface)."""
    return facts.flavor == "mysql" and facts.version_tuple >= (8, 0, 30)
