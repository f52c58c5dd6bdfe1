"""The end of most end-to-end tests: prepare a backup directory, restore it, and start a server on the result."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from innostream.recovery.chain import prepare_chain
from innostream.recovery.prepare import PrepareConfig, prepare_backup
from innostream.recovery.restore import RestoreConfig, restore_backup

from tools.sandbox import Server, start_server


@contextmanager
def prepared_and_started(srv: Server, backup: Path, workdir: Path,
                         incrementals: Sequence[Path] = ()) -> Iterator[Server]:
    """Prepare ``backup`` (with ``incrementals`` laid on it, oldest first) with ``srv``'s server binary, restore it
    into ``workdir/restored`` and yield a server of ``srv``'s kind running on it (``workdir/run``), stopped on exit.
    ``srv`` must be stopped or another instance."""
    config = PrepareConfig(backup, server_binary=srv.server_binary, use_memory="64M")
    if incrementals:
        prepare_chain(config, list(incrementals), apply_log_only=False)
    else:
        prepare_backup(config)
    datadir = workdir / "restored"
    restore_backup(RestoreConfig(backup, datadir))
    restored = start_server(srv.kind, workdir / "run", datadir=datadir, initialize=False)
    try:
        yield restored
    finally:
        restored.stop()
