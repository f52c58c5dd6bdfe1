"""``innostream rekey``: rewrap an encrypted archive's data key under a new user key, rewriting no data."""

from __future__ import annotations

import click
from innostream.cli.storage import options_from_context, s3_options
from innostream.log import log


@click.command("rekey")
@click.argument("archive", metavar="ARCHIVE|s3://BUCKET/KEY")
@s3_options()
@click.option("--decrypt-key-file", metavar="FILE", default=None, help="The archive's current key (mode 600).")
@click.option("--decrypt-key-command", metavar="CMD", default=None,
              help="The current key is what CMD prints on stdout (/bin/sh -c).")
@click.option("--encrypt-key-file", metavar="FILE", default=None, help="The new key (mode 600).")
@click.option("--encrypt-key-command", metavar="CMD", default=None,
              help="The new key is what CMD prints on stdout (/bin/sh -c).")
@click.option("--fsync/--no-fsync", default=True, show_default=True,
              help="fsync after each of the two slot writes (--no-fsync: not crash-safe).")
def rekey_cmd(archive: str, decrypt_key_file: str | None, decrypt_key_command: str | None,
              encrypt_key_file: str | None, encrypt_key_command: str | None, fsync: bool) -> None:
    """Rewrap the data key of the encrypted archive ARCHIVE under a new key, rewriting no data.

    A file: only the 176 bytes of the two key slots are rewritten in place (the new key's slot, synced, then the old
    one cleared, synced): a crash leaves the old key or both keys able to open the archive, never neither. An
    s3:// object (immutable) is replaced by a multipart upload of a new first part and server-side copies of the
    rest; the old object stands until it completes. Afterwards the old key no longer opens it (older versions kept by
    a versioned bucket still do).

    \b
    innostream rekey /backups/today.isa --decrypt-key-file old.key --encrypt-key-file new.key
    """
    from innostream.archive.rekey import rekey_file, rekey_object
    from innostream.keys import load_key

    if archive == "-":
        raise click.UsageError("rekey rewrites an archive file in place; a stream on stdin cannot be rekeyed")
    old = load_key(decrypt_key_file, decrypt_key_command, what="decrypt")
    new = load_key(encrypt_key_file, encrypt_key_command, what="encrypt")
    if old is None or new is None:
        raise click.UsageError("give the current key (--decrypt-key-file or --decrypt-key-command) and the new one "
                               "(--encrypt-key-file or --encrypt-key-command)")
    if archive.startswith("s3://"):
        old_id, new_id = rekey_object(archive, options_from_context(), old, new)
    else:
        old_id, new_id = rekey_file(archive, old, new, fsync=fsync)
    log.info("rekeyed %s: key id %s -> %s; the old key no longer opens it", archive, old_id, new_id)
