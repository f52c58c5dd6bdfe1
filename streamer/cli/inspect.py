"""``innostream inspect``: a thin click command over :mod:`innostream.inspect`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from innostream.flavor import Flavor
from innostream.formats.errors import EXIT_CORRUPT
from innostream.inspect import inspect_path, render, result_ok


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--flavor",
    type=click.Choice([f.value for f in Flavor]),
    default=None,
    help="Server family that wrote the files. Default: from the FSP flags, else from the data directory's files.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option("--no-fail", is_flag=True, help="Exit 0 even when invalid pages are found (report only).")
def inspect_cmd(path: Path, flavor: str | None, as_json: bool, no_fail: bool) -> None:
    """Check InnoDB tablespaces page by page, read-only; also shows redo files.

    \b
    PATH is one of:
      a tablespace (.ibd, ibdata1, undo_001/undo001, .ibu, ibtmp1, mysql.ibd): family, page sizes, space id,
        checksum algorithms seen, pages by type and every page the server would reject, with the reason;
      a data directory: one line per tablespace, then the invalid pages and the redo files;
      a redo file (ib_logfile0, #ib_redoN, xtrabackup_logfile) or #innodb_redo: its header and checkpoints;
      an incremental backup's NAME.delta or NAME.meta: page size, space id, the pages it carries, each validated.

    Pages are judged as the server and the backup tools judge them (checksum, LSN in header vs trailer, page
    number); a page that fails is re-read a few times, so a live server's in-flight writes are not reported.
    Safe on a running server: nothing is written.

    \b
    Exit status, like innochecksum:
      0  every page checked is valid
      2  PATH does not exist (usage error)
      3  invalid pages found, or a tablespace or redo file could not be read or parsed
         (the report is still printed in full; each problem is named in it)
    With --no-fail the status is 0 whenever the report could be made.
    """
    result = inspect_path(path, flavor)
    if as_json:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        click.echo(render(result))
    if not no_fail and not result_ok(result):
        sys.stdout.flush()
        click.get_current_context().exit(EXIT_CORRUPT)
