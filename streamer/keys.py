"""The user's encryption key, from a file or a command; never from the command line, never logged.

A key is 32 bytes (AES-256): the file or the command's stdout holds exactly 32 raw bytes, or 64 hex characters, or
the base64 of 32 bytes, with or without one trailing newline. Anything else is refused in one line (exit 2: the
command line names an unusable key), as is a key file that group or others may read or write, like ssh refuses a
private key with such permissions. A key command runs under ``/bin/sh -c`` (a DBA writes ``vault kv get -field=key
secret/backup`` as at a prompt); its stderr passes through, its stdout is the key.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import subprocess

from innostream.formats.errors import EXIT_USAGE, InnostreamError

KEY_SIZE = 32
#: a key file or key command output longer than this is not a key (and is not read further)
MAX_KEY_TEXT = 4096
#: seconds a key command may take (a KMS call over the network)
KEY_COMMAND_TIMEOUT = 120.0
_FORMS = "32 raw bytes, 64 hex characters or the base64 of 32 bytes"


class KeyUnusable(InnostreamError):
    """The key file or key command cannot give a key: missing, too open, failing, or not a key."""

    exit_code = EXIT_USAGE


def parse_key(data: bytes, source: str) -> bytes:
    """The 32-byte key in ``data`` (raw, hex or base64, one trailing newline allowed).

    Raises:
        KeyUnusable: anything else (the message names ``source`` and the length, never the bytes).
    """
    if len(data) == KEY_SIZE:
        return data
    if len(data) == KEY_SIZE + 1 and data.endswith(b"\n"):
        return data[:KEY_SIZE]
    text = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) == KEY_SIZE:
        return key
    raise KeyUnusable(f"{source} holds {len(data)} bytes that are not a key: expected {_FORMS}",
                      hint="make one with: head -c 32 /dev/urandom > KEYFILE; chmod 600 KEYFILE")


def load_key_file(path: str) -> bytes:
    """The key in the file ``path``, refusing a file that group or others may read or write.

    Raises:
        KeyUnusable: cannot be read, too open, owned by someone else, not a regular file, or not a key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise KeyUnusable(f"cannot open the key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyUnusable(f"the key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyUnusable(f"the key file {path} is accessible by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); refusing it", hint=f"chmod 600 {path}")
        if st.st_uid not in (os.geteuid(), 0):
            raise KeyUnusable(f"the key file {path} is owned by uid {st.st_uid}, not by this user or root; refusing "
                              "it")
        chunks = []
        size = 0
        while size <= MAX_KEY_TEXT:
            chunk = os.read(fd, MAX_KEY_TEXT + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise KeyUnusable(f"cannot read the key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return parse_key(b"".join(chunks), f"the key file {path}")


def load_key_command(command: str, *, timeout: float = KEY_COMMAND_TIMEOUT) -> bytes:
    """The key a shell command prints on stdout (``/bin/sh -c COMMAND``; its stderr goes to ours).

    Raises:
        KeyUnusable: the command cannot run, fails, times out, prints nothing or not a key.
    """
    try:
        done = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise KeyUnusable(f"the key command did not finish within {timeout:.0f} s") from None
    except OSError as exc:
        raise KeyUnusable(f"cannot run the key command: {exc.strerror}") from None
    if done.returncode != 0:
        how = (f"was killed by signal {-done.returncode}" if done.returncode < 0
               else f"exited with status {done.returncode}")
        raise KeyUnusable(f"the key command {how}; no key")
    if not done.stdout:
        raise KeyUnusable("the key command printed nothing; no key")
    if len(done.stdout) > MAX_KEY_TEXT:
        raise KeyUnusable(f"the key command printed {len(done.stdout)} bytes, not a key: expected {_FORMS}")
    return parse_key(done.stdout, "the key command's output")


def load_key(key_file: str | None, key_command: str | None, *, what: str = "encrypt") -> bytes | None:
    """The key from ``--{what}-key-file`` or ``--{what}-key-command`` (at most one), or None if neither."""
    if key_file is not None and key_command is not None:
        raise KeyUnusable(f"give one of --{what}-key-file and --{what}-key-command, not both")
    if key_file is not None:
        return load_key_file(key_file)
    if key_command is not None:
        return load_key_command(key_command)
    return None
