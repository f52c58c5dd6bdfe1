"""The ``innostream`` command line: thin click commands over library functions.

Subcommands live in their own modules and are imported only when run (``LAZY_COMMANDS``), so ``--help`` and
``extract`` do not pay for what ``backup`` imports. Errors from :mod:`innostream.errors` become one line on stderr and
their ``exit_code``; a traceback only with ``--debug``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click
from innostream import __version__
from innostream.alloc import tune_malloc
from innostream.errors import EXIT_INTERRUPTED, InnostreamError
from innostream.log import setup_logging

#: command name -> "module:attribute" of a click.Command
LAZY_COMMANDS: dict[str, str] = {
    "inspect": "innostream.cli.inspect:inspect_cmd",
    "extract": "innostream.cli.archive:extract_cmd",
    "list": "innostream.cli.archive:list_cmd",
    "verify": "innostream.cli.archive:verify_cmd",
    "backup": "innostream.cli.backup:backup_cmd",
    "prepare": "innostream.cli.prepare:prepare_cmd",
    "restore": "innostream.cli.prepare:restore_cmd",
    "import": "innostream.cli.table:import_cmd",
    "put": "innostream.cli.storage:put_cmd",
    "get": "innostream.cli.storage:get_cmd",
    "rekey": "innostream.cli.rekey:rekey_cmd",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module_name, attr = LAZY_COMMANDS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="innostream")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug lines on stderr.")
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, verbose: bool, debug: bool) -> None:
    """Hot physical backups of MySQL 8.0.30+ and MariaDB 10.8+ InnoDB servers, streamed.

    \b
    innostream backup --datadir /var/lib/mysql --stream | ssh host 'innostream extract -C /backups/today'
    innostream prepare --target-dir /backups/today
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    setup_logging(-1 if quiet else (1 if verbose else 0))


def _fail(message: str, code: int) -> None:
    click.echo(f"innostream: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI and map errors to one line and an exit code.

    The command line goes to the commands as ``ctx.obj["argv"]`` (backup records it in xtrabackup_info).
    """
    args = list(argv) if argv is not None else sys.argv[1:]
    debug = "--debug" in args
    tune_malloc()  # before the first MiB buffer: frames handed between threads must not be re-faulted each time
    try:
        return cli.main(args=args, prog_name="innostream", standalone_mode=False, obj={"argv": tuple(args)})
    except click.exceptions.Abort:
        _fail("interrupted", EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except InnostreamError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        # The reader went away (ssh dropped, `| head`): per the CPython signal docs, point stdout at devnull so the
        # interpreter's final flush does not raise again, and exit non-zero.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        _fail("output pipe closed by the reader; the stream is incomplete", EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        _fail("interrupted; nothing on the server was changed", EXIT_INTERRUPTED)
    return None
