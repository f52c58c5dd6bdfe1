"""Encrypted backups of the real servers, and an encrypted archive in the real object store (SeaweedFS)."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

from innostream.archive import ArchiveWriter, ZstdCodec, read_archive
from innostream.archive.crypt import new_codec
from innostream.extract import extract

from tests.archive.builders import PY, REPO, run_cli, tree

KEY = bytes(range(32))


def _key(tmp_path: Path) -> Path:
    path = tmp_path / "backup.key"
    path.write_bytes(KEY.hex().encode() + b"\n")
    path.chmod(0o600)
    return path


def _backup(server, out: Path, *extra: str) -> None:
    cmd = (f"cd {REPO} && {PY} -m innostream -q backup --stream -S {server.socket} -u root {' '.join(extra)} "
           f"> {out}")
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _round_trip(server, tmp_path: Path, *, restore: bool = False) -> None:
    key = _key(tmp_path)
    enc = tmp_path / "enc.isa"
    _backup(server, enc, "--encrypt-key-file", str(key))
    assert b"sample/" not in enc.read_bytes()  # names are sealed too
    r = run_cli(["verify", "--decrypt-key-file", str(key), str(enc)])  # every page validated
    assert r.returncode == 0, r.stderr
    assert b"NOT authenticated" not in r.stderr
    r = run_cli(["extract", "--decrypt-key-file", str(key), "-C", str(tmp_path / "x"), str(enc)])
    assert r.returncode == 0, r.stderr
    assert "xtrabackup_checkpoints" in tree(tmp_path / "x")
    r = run_cli(["extract", "-C", str(tmp_path / "nokey"), str(enc)])
    assert r.returncode == 3
    if restore:  # verify --restore extracts the encrypted archive with the key, prepares and starts a server on it
        (tmp_path / "scratch").mkdir()
        r = run_cli(["verify", "--restore", "--server-binary", str(server.server_binary), "--scratch-dir",
                     str(tmp_path / "scratch"), "--decrypt-key-file", str(key), str(enc)])
        assert r.returncode == 0, r.stderr[-3000:]
        assert b"with errors" in r.stderr
        assert b"; OK" in r.stderr

    # byte-identical to an unencrypted extract of the same backup: a plain backup, re-encrypted frame by frame
    plain = tmp_path / "plain.isa"
    _backup(server, plain)
    out = io.BytesIO()
    with plain.open("rb") as inp:
        writer = ArchiveWriter(out, meta={"flavor": server.kind}, codec=new_codec(ZstdCodec(1), KEY))
        read_archive(inp, writer, parallel=1)  # one pool thread: each file's data in order, as the writer needs
    extract(plain.open("rb"), tmp_path / "ref")
    extract(io.BytesIO(out.getvalue()), tmp_path / "dec", key=KEY)
    ref = tree(tmp_path / "ref")
    assert tree(tmp_path / "dec") == ref
    assert any(name.startswith("sample/") and name.endswith(".ibd") for name in ref)


def test_encrypted_backup_round_trip_mariadb(mariadb10, tmp_path: Path):
    _round_trip(mariadb10, tmp_path, restore=True)


def test_encrypted_backup_round_trip_mysql(mysql9, tmp_path: Path):
    _round_trip(mysql9, tmp_path)


def test_encrypted_archive_in_the_object_store(objstore, tmp_path: Path):
    from tests.archive.test_encryption import write_encrypted
    from tests.archive.test_encryption_keys import _files

    key = _key(tmp_path)
    blob = write_encrypted(_files())
    env = {**os.environ, "PYTHONPATH": str(REPO), **objstore.env()}

    def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([PY, "-m", "innostream", *args], input=stdin, capture_output=True, env=env,
                              timeout=600)

    assert cli("put", "s3://backups/enc/a.isa", stdin=blob).returncode == 0
    got = cli("get", "s3://backups/enc/a.isa")
    assert got.returncode == 0
    assert got.stdout == blob
    listed = cli("list", "s3://backups/enc/")
    assert listed.returncode == 0, listed.stderr
    assert b"innostream encrypted key " in listed.stdout
    r = cli("extract", "--decrypt-key-file", str(key), "-C", str(tmp_path / "t"), "s3://backups/enc/a.isa")
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "t") == _files()
    r = cli("extract", "-C", str(tmp_path / "u"), "s3://backups/enc/a.isa")
    assert r.returncode == 3
    assert not (tmp_path / "u").exists()



def test_incremental_from_an_encrypted_base(mariadb10, tmp_path: Path):
    from innostream.archive import NullSink

    key = _key(tmp_path)
    base = tmp_path / "base.isa"
    _backup(mariadb10, base, "--encrypt-key-file", str(key))
    with base.open("rb") as inp:
        to_lsn = read_archive(inp, NullSink(), key=KEY, verify_data=False).trailer["to_lsn"]
    argv = ["backup", "-S", str(mariadb10.socket), "-u", "root", "--incremental-basedir", str(base)]
    r = run_cli([*argv, "--target-dir", str(tmp_path / "nokey")])
    assert r.returncode == 3
    assert b"is encrypted (key id" in r.stderr
    r = run_cli([*argv, "--target-dir", str(tmp_path / "inc"), "--decrypt-key-command", f"cat {key}"])
    assert r.returncode == 0, r.stderr[-3000:]
    checkpoints = (tmp_path / "inc" / "xtrabackup_checkpoints").read_text()
    assert f"from_lsn = {to_lsn}\n" in checkpoints


def test_rekey_of_objects(objstore, tmp_path: Path):
    """A small object (one PUT) and one over 8 MiB (a new first part, the rest copied server-side)."""
    from tests.archive.test_encryption import OTHER, write_encrypted

    env = {**os.environ, "PYTHONPATH": str(REPO), **objstore.env()}
    old, new = _key(tmp_path), tmp_path / "new.key"
    new.write_bytes(OTHER)
    new.chmod(0o600)
    for name, files in (("small", {"a": b"x" * 1000}),
                        ("big", {"a": os.urandom(6 << 20), "b": os.urandom(6 << 20) + b"end"})):
        blob = write_encrypted(files, compress=False)
        loc = f"s3://backups/rekey/{name}"

        def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run([PY, "-m", "innostream", *args], input=stdin, capture_output=True, env=env,
                                  timeout=600)

        assert cli("put", loc, stdin=blob).returncode == 0
        r = cli("rekey", loc, "--decrypt-key-file", str(new), "--encrypt-key-file", str(old))
        assert r.returncode == 3, r.stderr  # the wrong current key: nothing changes
        r = cli("rekey", loc, "--decrypt-key-file", str(old), "--encrypt-key-file", str(new))
        assert r.returncode == 0, r.stderr
        got = cli("get", loc).stdout
        assert len(got) == len(blob)
        lo, hi = 56, 232  # the key slots: the only bytes that differ
        assert got[:lo] == blob[:lo]
        assert got[hi:] == blob[hi:]
        r = cli("extract", "--decrypt-key-file", str(new), "-C", str(tmp_path / name), loc)
        assert r.returncode == 0, r.stderr
        assert tree(tmp_path / name) == files
        r = cli("extract", "--decrypt-key-file", str(old), "-C", str(tmp_path / f"{name}-old"), loc)
        assert r.returncode == 3
