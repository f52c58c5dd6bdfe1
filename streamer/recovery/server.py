"""A throwaway server: started on a directory with the options it is given, followed through its error log, and
shut down cleanly (or killed, on any error) so it never outlives us.

It knows nothing of backups: prepare hands it the whole command line, a timeout and a private run directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pymysql
from innostream.errors import PrepareError
from innostream.flavor import Flavor
from innostream.log import log

#: Error-log lines worth showing in the condensed output (the rest only with --verbose).
_INTERESTING = re.compile(
    r"\[ERROR\]|crash recovery|End of log|To recover|Starting to parse|scanned up to|Apply batch|"
    r"Recovered|Rolled back|rollback|log sequence number|ready for connections|Shutdown complete|Resizing redo|"
    r"Applying log|Database was not shutdown normally|Starting crash|progress|Last binlog|batch|Read redo log|"
    r"Trying to recover|\d%",
    re.IGNORECASE,
)
_BORING = re.compile(r"max_open_files|Could not increase|Using .* instructions|io_uring|CA certificate|"
                     r"Insecure configuration|deprecated", re.IGNORECASE)
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\s?\d?\d:\d\d:\d\d(?:\.\d+)?Z?\s+\d+\s+")
#: Follow-up errors that say nothing about the cause.
_GENERIC_ERRORS = re.compile(r"Aborting|registration as a STORAGE ENGINE failed|Unknown/unsupported storage engine|"
                             r"Operating system error number|Error number \d+ means|Failed to initialize DD|"
                             r"Data Dictionary initialization failed|Plugin initialization aborted")
_VERSION_RE = re.compile(r"\bVer\s+(\d+)\.(\d+)\.(\d+)(\S*)")
#: Seconds between our own "still recovering" lines, for recoveries that print nothing for a while.
PROGRESS_EVERY = 30.0


def server_binary_version(binary: Path) -> tuple[Flavor, tuple[int, int, int], str]:
    """Run ``binary --version``: return (flavor, (major, minor, patch), the whole line)."""
    try:
        res = subprocess.run([str(binary), "--no-defaults", "--version"], capture_output=True, text=True,
                             timeout=60, check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise PrepareError(f"cannot run server binary {binary}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise PrepareError(f"server binary {binary} --version did not answer in 60 s") from None
    text = (res.stdout + res.stderr).strip()
    m = _VERSION_RE.search(text)
    if res.returncode != 0 or m is None:
        raise PrepareError(f"{binary} does not look like a MySQL/MariaDB server: {text[:200]!r}")
    return Flavor.of_version(text), (int(m.group(1)), int(m.group(2)), int(m.group(3))), text.splitlines()[0]


class ErrorLogFollower:
    """Follow the server's error log from a thread and pass condensed lines to the logger."""

    def __init__(self, path: Path, sink: Callable[[str], None]) -> None:
        self.path = path
        self.sink = sink
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="errlog-follower", daemon=True)

    def __enter__(self) -> ErrorLogFollower:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Read what is left of the log and stop following (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        pos = 0
        partial = ""
        while True:
            stopping = self._stop.is_set()
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                pos += len(chunk)
                text = partial + chunk.decode(errors="replace")
                *full, partial = text.split("\n")
                for line in full:
                    self._line(line)
            if stopping:
                if partial:
                    self._line(partial)
                return
            self._stop.wait(0.2)

    def _line(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.lines.append(line)
        short = _TIMESTAMP.sub("", line)
        if _INTERESTING.search(short) and not _BORING.search(short):
            self.sink(short)
        else:
            log.debug("server: %s", short)


class ServerExited(PrepareError):
    """The server stopped before it accepted connections (``lines``: its error log)."""

    def __init__(self, message: str, lines: list[str], *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.lines = lines


@dataclass(frozen=True)
class RunDir:
    """The server's private directory: socket, pid file, error log, output (and its tmpdir)."""

    path: Path

    @property
    def socket(self) -> Path:
        return self.path / "mysqld.sock"

    @property
    def pid_file(self) -> Path:
        return self.path / "mysqld.pid"

    @property
    def error_log(self) -> Path:
        return self.path / "prepare.err"

    @property
    def output(self) -> Path:
        return self.path / "server.out"


@contextlib.contextmanager
def run_dir() -> Iterator[RunDir]:
    """A short private directory under /tmp for socket, pid and error log (chroot wrappers share /tmp).

    Removed afterwards, except when the server failed: then its log stays for the user (the error names it)."""
    run = Path(tempfile.mkdtemp(prefix="innostream-prepare-", dir="/tmp"))
    keep = False
    try:
        yield RunDir(run)
    except PrepareError:
        keep = True
        raise
    finally:
        if not keep:
            shutil.rmtree(run, ignore_errors=True)


@contextlib.contextmanager
def running_server(argv: list[str], run: RunDir, timeout: float,
                   lines: list[str]) -> Iterator[pymysql.connections.Connection]:
    """Start the server (``argv``), wait until it accepts connections on ``run.socket`` and yield a connection;
    afterwards shut it down cleanly. On any error it is killed. Its error-log lines are appended to ``lines``.

    Raises:
        ServerExited: it stopped before accepting connections. PrepareError: it did not get ready or shut down
            within ``timeout``, or exited with an error at shutdown.
    """
    log.debug("prepare: %s", " ".join(argv))
    with ErrorLogFollower(run.error_log, lambda s: log.info("server: %s", s)) as follower:
        with open(run.output, "wb") as out:
            proc = subprocess.Popen(_die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            conn = _wait_ready(proc, run.socket, timeout, run.error_log)
            try:
                yield conn
            finally:
                conn.close()
            _shutdown(proc, timeout, run.error_log)
        except BaseException:
            if _alive(proc):
                proc.kill()
                proc.wait()
            raise
        finally:
            follower.stop()
            lines.extend(follower.lines)
    if proc.returncode != 0:
        raise PrepareError(f"the server exited with code {proc.returncode} at shutdown", file=str(run.error_log),
                           hint=_last_errors(follower.lines))


def _die_with_parent(argv: list[str]) -> list[str]:
    """The server is killed if prepare dies (kill -9 included), like a crash of the whole machine, instead of living
    on and holding the backup directory's locks against the rerun: util-linux ``setpriv --pdeathsig KILL`` sets
    that and execs the server (same pid). Not a ``preexec_fn``: Python code between fork and exec lost a SIGTERM
    that reached prepare at that moment (seen: verify --restore ran to the end instead of stopping).

    A parent that dies before setpriv's prctl sends no signal (seen: kill -9 of prepare just as it started MySQL
    left mysqld running, 1 run in 3 of the test): a shell between setpriv and the server checks that its parent is
    still prepare, after the prctl, and gives up if not."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.debug("setpriv not found: the server would outlive a killed prepare")
        return list(argv)
    guard = 'test "$PPID" = "$1" || exit 70; shift; exec "$@"'
    return [setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", guard, "innostream-server", str(os.getpid()),
            *argv]


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def _last_errors(lines: list[str]) -> str:
    """The server's own words for why it failed: its first specific [ERROR] lines."""
    errors = [_TIMESTAMP.sub("", line) for line in lines if "[ERROR]" in line]
    specific = [e for e in errors if not _GENERIC_ERRORS.search(e)] or errors
    return ("server said: " + " | ".join(specific[:2])) if specific else "see the server error log"


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path, timeout: float,
                err: Path) -> pymysql.connections.Connection:
    started = time.monotonic()
    deadline = started + timeout
    next_report = started + PROGRESS_EVERY
    while True:
        now = time.monotonic()
        if now >= next_report:
            next_report = now + PROGRESS_EVERY
            log.info("prepare: crash recovery running for %.0f s", now - started)
        if not _alive(proc):
            lines = err.read_text(errors="replace").splitlines() if err.exists() else []
            raise ServerExited(f"crash recovery failed: the server exited with code {proc.returncode}", lines,
                               hint=_last_errors(lines) + f" (full log kept in {err})")
        if sock.exists():
            try:
                return pymysql.connect(unix_socket=str(sock), user="root", autocommit=True, connect_timeout=10)
            except pymysql.MySQLError:
                pass
        if time.monotonic() > deadline:
            raise PrepareError(f"the server did not finish crash recovery within {timeout:.0f} s",
                               hint=f"see {err}; raise --timeout for large backups")
        time.sleep(0.2)


def _shutdown(proc: subprocess.Popen[bytes], timeout: float, err: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise PrepareError(f"the server did not shut down within {timeout:.0f} s", hint=f"see {err}") from None
