"""The seekable index against a real object store (SeaweedFS, the ``objstore`` fixture): ``extract --include``
from an object fetches only the chosen members' ranges, whole extraction downloads ranges in parallel, damage
exits 3, ``list s3://bucket/prefix/`` reads each backup's end."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from innostream.archive.codec import ZstdCodec
from innostream.archive.crypt import new_codec
from innostream.extract import extract
from innostream.storage import ObjectLocation
from innostream.storage.s3 import S3Options, S3Ranges

from tests.archive.builders import REPO, tree
from tests.archive.test_index import KEY, _files, _write

INNOSTREAM = [sys.executable, "-m", "innostream"]


def _run(store, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **store.env()}
    return subprocess.run([*INNOSTREAM, *args], input=input, capture_output=True, env=env, timeout=600)


def _client(store):
    return boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                        aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key,
                        config=Config(retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def stored(objstore, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], bytes]:
    files = _files()
    d = tmp_path_factory.mktemp("idx")
    blob = _write(d / "a.isa", files)
    client = _client(objstore)
    client.put_object(Bucket="backups", Key="idx/full", Body=blob)
    client.put_object(Bucket="backups", Key="idx/old", Body=_write(d / "old.isa", files, index=False))
    bad = bytearray(blob)
    bad[-20] ^= 0x10
    client.put_object(Bucket="backups", Key="idx/bad-locator", Body=bytes(bad))
    client.put_object(Bucket="backups", Key="idx/encrypted",
                      Body=_write(d / "enc.isa", files, codec=new_codec(ZstdCodec(1), KEY)))
    return files, blob


def test_include_from_an_object_fetches_only_its_ranges(objstore, stored, tmp_path: Path, monkeypatch):
    files, blob = stored
    for k, v in objstore.env().items():
        monkeypatch.setenv(k, v)
    src = S3Ranges(ObjectLocation("backups", "idx/full"), S3Options(endpoint_url=objstore.endpoint))
    try:
        extract(io.BytesIO(b""), tmp_path / "one", fsync=False, include=["db/t3.ibd"], source=src)
    finally:
        src.close()
    got = tree(tmp_path / "one")
    assert got["db/t3.ibd"] == files["db/t3.ibd"]
    assert "db/t2.ibd" not in got
    assert src.bytes_read < len(blob) / 4, (src.bytes_read, len(blob))  # 2.3 MiB of data in a 13 MiB object
    assert src.requests <= 8, src.requests


def test_cli_include_whole_and_encrypted_from_objects(objstore, stored, tmp_path: Path):
    files, _ = stored
    r = _run(objstore, "extract", "--no-fsync", "--include", "db/t0.ibd", "-C", str(tmp_path / "inc"),
             "s3://backups/idx/full")
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "inc")["db/t0.ibd"] == files["db/t0.ibd"]
    r = _run(objstore, "extract", "--no-fsync", "-C", str(tmp_path / "all"), "s3://backups/idx/full")
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "all") == files
    key = tmp_path / "key"
    key.write_bytes(KEY.hex().encode())
    key.chmod(0o600)
    r = _run(objstore, "extract", "--no-fsync", "--include", "db/t5.ibd", "--decrypt-key-file", str(key), "-C",
             str(tmp_path / "enc"), "s3://backups/idx/encrypted")
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "enc")["db/t5.ibd"] == files["db/t5.ibd"]
    r = _run(objstore, "extract", "--no-fsync", "--include", "db/t5.ibd", "-C", str(tmp_path / "nokey"),
             "s3://backups/idx/encrypted")
    assert r.returncode == 3, r.stderr
    assert b"no key was given" in r.stderr
    assert not (tmp_path / "nokey").exists()
    r = _run(objstore, "extract", "--no-fsync", "--include", "db/t1.ibd", "-C", str(tmp_path / "old"),
             "s3://backups/idx/old")
    assert r.returncode == 0, r.stderr
    assert tree(tmp_path / "old")["db/t1.ibd"] == files["db/t1.ibd"]


def test_damaged_locator_in_an_object_exits_3(objstore, stored, tmp_path: Path):
    r = _run(objstore, "extract", "--no-fsync", "--include", "db/t0.ibd", "-C", str(tmp_path / "t"),
             "s3://backups/idx/bad-locator")
    assert r.returncode == 3, r.stderr
    assert b"end locator checksum mismatch" in r.stderr
    assert not (tmp_path / "t/db/t0.ibd").exists()


def test_list_prefix_reads_each_backups_end(objstore, stored):
    r = _run(objstore, "list", "s3://backups/idx/")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[-1]: line for line in r.stdout.decode().splitlines()}
    assert "complete" in lines["idx/full"]
    assert "full 0..42" in lines["idx/full"]
    assert "innostream mariadb" in lines["idx/full"]
    assert f"{len(stored[0])} files" in lines["idx/full"]
    assert "damaged" in lines["idx/bad-locator"]
    assert "(no index)" in lines["idx/old"]
    assert "encrypted" in lines["idx/encrypted"]
