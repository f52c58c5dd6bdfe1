"""``innostream import``: thin click command over :mod:`innostream.table_import`."""

from __future__ import annotations

from pathlib import Path

import click
from innostream.cli.backup import _PROMPT, hide_password
from innostream.connection import ConnectionOptions
from innostream.table_import import ImportConfig, import_table

_DIR = click.Path(file_okay=False, exists=True, path_type=Path)


@click.command("import")
@click.option("--target-dir", required=True, type=_DIR, help="A backup prepared with `prepare --export`.")
@click.option("--table", "table", required=True, metavar="DB.TABLE", help="The table in the backup.")
@click.option("--as", "as_table", metavar="DB.TABLE", help="Import it under this name instead.")
@click.option("--replace", is_flag=True, help="If the table exists, swap it for the backup's copy (the existing "
              "one is dropped once the import passed CHECK TABLE).")
@click.option("--no-fsync", "no_fsync", is_flag=True, help="Do not fsync the copied files.")
@click.option("--defaults-file", type=click.Path(dir_okay=False), help="Read [client] options only from this file.")
@click.option("-u", "--user", help="Server user (needs CREATE, ALTER, DROP, INSERT, SELECT on the table).")
@click.option("-p", "--password", is_flag=False, flag_value=_PROMPT, default=None,
              help="Password; without a value, ask on the terminal (better: [client] password= in an option file).")
@click.option("--host", help="Server host; localhost or nothing means the unix socket (the server must be local).")
@click.option("-P", "--port", type=int)
@click.option("-S", "--socket", help="Unix socket of the server.")
def import_cmd(target_dir: Path, table: str, as_table: str | None, replace: bool, no_fsync: bool,
               defaults_file: str | None, user: str | None, password: str | None, host: str | None,
               port: int | None, socket: str | None) -> None:
    """Restore one table of a prepared, exported backup into a running server on this machine.

    \b
    Creates the table from the saved CREATE TABLE (refused if it exists, unless --replace), DISCARD TABLESPACE,
    copies its .ibd and .cfg files (every partition's) into the server's datadir with the datadir's owner,
    IMPORT TABLESPACE, then CHECK TABLE and a row count. Refused in one line: another server family, major.minor
    version or page size than the backup's; a table that was not in its own tablespace (docs/RESTORE.md).

    \b
    innostream prepare --export --target-dir /backups/today
    innostream import --target-dir /backups/today --table shop.orders --socket /run/mysqld/mysqld.sock
    innostream import --target-dir /backups/today --table shop.orders --as shop.orders_restored
    """
    if password == _PROMPT:
        password = click.prompt("Enter password", hide_input=True, default="", show_default=False, err=True)
    elif password:
        hide_password(password)
    result = import_table(ImportConfig(
        target_dir=target_dir.resolve(), table=table, as_table=as_table, replace=replace, fsync=not no_fsync,
        connection=ConnectionOptions(user=user, password=password, host=host, port=port, socket=socket,
                                     defaults_file=defaults_file)))
    click.echo(f"innostream: imported {table} as {result.schema}.{result.table}: CHECK TABLE {result.check}, "
               f"{result.rows} rows, {result.files} files ({result.bytes} bytes)", err=True)
