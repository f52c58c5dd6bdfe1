"""Object storage (``s3://``) against a real SeaweedFS (tools/objstore.py): put/get, backup --to, extract/verify/list
from an object, the multipart upload's guarantees, and failures (server killed, bad objects, wrong names)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import crc32c
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from innostream.storage.s3 import MAX_PARTS, part_size_for

INNOSTREAM = [sys.executable, "-m", "innostream"]
REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def _env(store, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **store.env(), **extra}


def _run(store, *args: str, input: bytes | None = None, **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*INNOSTREAM, *args], input=input, capture_output=True, env=_env(store, **extra),
                          timeout=600)


def _client(store):
    return boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                        aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key,
                        config=Config(retries={"max_attempts": 1}))


def _exists(store, key: str) -> bool:
    try:
        _client(store).head_object(Bucket="backups", Key=key)
        return True
    except ClientError:
        return False


def _uploads(store, key: str) -> list[str]:
    resp = _client(store).list_multipart_uploads(Bucket="backups", Prefix=key)
    return [u["UploadId"] for u in resp.get("Uploads", []) if u["Key"] == key]


def _parts(store, key: str) -> int:
    ids = _uploads(store, key)
    if not ids:
        return 0
    return len(_client(store).list_parts(Bucket="backups", Key=key, UploadId=ids[0]).get("Parts", []))


def _wait_for(cond, what: str, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)


def _error_line(stderr: bytes) -> str:
    errors = [line for line in stderr.decode().splitlines() if line.startswith("innostream: error:")]
    assert len(errors) == 1, stderr.decode()
    return errors[0]


def _cli_conn(srv) -> list[str]:
    return ["--socket", str(srv.socket), "--user", "root", "--datadir", str(srv.datadir)]


# ---------------------------------------------------------------------------------------------------------------
# the upload's shape


def test_part_sizes_hold_5_tib_in_10000_parts():
    assert sum(part_size_for(n) for n in range(1, MAX_PARTS + 1)) >= 5 << 40
    assert part_size_for(1) == 8 * MIB
    assert part_size_for(901) == 16 * MIB
    assert max(part_size_for(n) for n in range(1, MAX_PARTS + 1)) <= 5 << 30
    assert sum(part_size_for(n, 5 * MIB) for n in range(1, MAX_PARTS + 1)) >= 5 << 40


# ---------------------------------------------------------------------------------------------------------------
# put / get


def test_put_get_roundtrip_multipart(objstore, tmp_path):
    data = os.urandom(23 * MIB + 12345)
    put = _run(objstore, "put", "--part-size", "5", "s3://backups/rt/a", input=data)
    assert put.returncode == 0, put.stderr.decode()
    assert b"in 5 parts" in put.stderr
    got = _run(objstore, "get", "s3://backups/rt/a")
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == data
    assert not _uploads(objstore, "rt/a")
    # Every part's CRC32C was sent and kept: the object's composite checksum is the CRC32C of the parts' CRC32Cs.
    digests = b"".join(crc32c.crc32c(data[i:i + 5 * MIB]).to_bytes(4, "big") for i in range(0, len(data), 5 * MIB))
    composite = base64.b64encode(crc32c.crc32c(digests).to_bytes(4, "big")).decode() + "-5"
    head = _client(objstore).head_object(Bucket="backups", Key="rt/a", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32C"] == composite


def test_empty_put(objstore):
    put = _run(objstore, "put", "s3://backups/rt/empty", input=b"")
    assert put.returncode == 0, put.stderr.decode()
    assert _run(objstore, "get", "s3://backups/rt/empty").stdout == b""


def test_object_appears_only_when_complete(objstore):
    key = "rt/partial"
    proc = subprocess.Popen([*INNOSTREAM, "put", "--part-size", "5", f"s3://backups/{key}"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(objstore))
    assert proc.stdin is not None
    proc.stdin.write(os.urandom(12 * MIB))
    proc.stdin.flush()
    _wait_for(lambda: _parts(objstore, key) >= 2, "two parts stored")
    assert not _exists(objstore, key)  # parts stored, but no object yet
    listed = _run(objstore, "list", "s3://backups/rt/")
    assert listed.returncode == 0, listed.stderr.decode()
    assert [line.split()[3] for line in listed.stdout.decode().splitlines() if line.endswith(key)] == ["incomplete"]
    proc.stdin.close()
    assert proc.wait(120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert _exists(objstore, key)


def test_sigterm_aborts_the_upload(objstore):
    key = "rt/cancelled"
    proc = subprocess.Popen([*INNOSTREAM, "put", "--part-size", "5", f"s3://backups/{key}"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(objstore))
    assert proc.stdin is not None
    proc.stdin.write(os.urandom(12 * MIB))
    proc.stdin.flush()
    _wait_for(lambda: _parts(objstore, key) >= 2, "two parts stored")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 130
    assert "upload was aborted" in _error_line(proc.stderr.read() if proc.stderr else b"")
    assert not _exists(objstore, key)
    assert not _uploads(objstore, key)  # no orphan parts


def test_wrong_secret_refused_and_never_shown(objstore):
    secret = "not-the-secret-0123456789"
    put = _run(objstore, "-v", "put", "s3://backups/rt/x", input=b"abc", AWS_SECRET_ACCESS_KEY=secret)
    assert put.returncode == 6
    line = _error_line(put.stderr)
    assert "SignatureDoesNotMatch" in line or "AccessDenied" in line or "InvalidAccessKeyId" in line
    assert secret not in put.stderr.decode()
    ok = _run(objstore, "-v", "put", "s3://backups/rt/y", input=b"abc")
    assert ok.returncode == 0
    assert objstore.secret_key not in ok.stderr.decode()


def test_credentials_from_profile(objstore, tmp_path):
    """The AWS shared credentials file and --profile, with nothing in the environment."""
    creds = tmp_path / "credentials"
    creds.write_text(f"[store]\naws_access_key_id = {objstore.access_key}\n"
                     f"aws_secret_access_key = {objstore.secret_key}\n")
    env = {k: v for k, v in _env(objstore).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                                "AWS_ENDPOINT_URL")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
    put = subprocess.run([*INNOSTREAM, "put", "--profile", "store", "--endpoint-url", objstore.endpoint,
                          "--region", "us-east-1", "s3://backups/rt/profile"], input=b"hello", capture_output=True,
                         env=env, timeout=120)
    assert put.returncode == 0, put.stderr.decode()
    assert _client(objstore).get_object(Bucket="backups", Key="rt/profile")["Body"].read() == b"hello"


def test_missing_object_and_wrong_bucket(objstore, tmp_path):
    got = _run(objstore, "get", "s3://backups/rt/no-such-object")
    assert got.returncode == 4
    assert "no object s3://backups/rt/no-such-object" in _error_line(got.stderr)
    ver = _run(objstore, "verify", "s3://backups/rt/no-such-object")
    assert ver.returncode == 4
    _error_line(ver.stderr)
    ext = _run(objstore, "extract", "-C", str(tmp_path / "x"), "s3://no-such-bucket/a")
    assert ext.returncode == 4
    _error_line(ext.stderr)
    put = _run(objstore, "put", "s3://no-such-bucket/a", input=b"abc")
    assert put.returncode == 6
    assert "NoSuchBucket" in _error_line(put.stderr)


# ---------------------------------------------------------------------------------------------------------------
# the server killed mid-upload


def _feed(proc, chunks: list[bytes], gate: threading.Event) -> None:
    assert proc.stdin is not None
    try:
        for i, chunk in enumerate(chunks):
            if i == len(chunks) // 2:
                gate.wait(120)
            proc.stdin.write(chunk)
        proc.stdin.close()
    except BrokenPipeError:
        pass


def test_server_killed_and_restarted_mid_upload(fresh_objstore):
    store = fresh_objstore
    key = "kill/retried"
    chunks = [os.urandom(MIB) for _ in range(40)]
    proc = subprocess.Popen([*INNOSTREAM, "put", "--part-size", "5", f"s3://backups/{key}"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(store))
    gate = threading.Event()
    feeder = threading.Thread(target=_feed, args=(proc, chunks, gate))
    feeder.start()
    _wait_for(lambda: _parts(store, key) >= 2, "two parts stored")
    store.kill()
    gate.set()  # the rest arrives while the server is down: its parts fail and are retried
    time.sleep(1)
    store.restart()
    feeder.join()
    assert proc.wait(300) == 0, proc.stderr.read().decode() if proc.stderr else ""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert "retry" in stderr
    body = _client(store).get_object(Bucket="backups", Key=key)["Body"].read()
    assert body == b"".join(chunks)


def test_server_killed_for_good_fails_cleanly(fresh_objstore):
    store = fresh_objstore
    key = "kill/failed"
    chunks = [os.urandom(MIB) for _ in range(40)]
    proc = subprocess.Popen([*INNOSTREAM, "put", "--part-size", "5", "--retry-time", "3", f"s3://backups/{key}"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(store))
    gate = threading.Event()
    feeder = threading.Thread(target=_feed, args=(proc, chunks, gate))
    feeder.start()
    _wait_for(lambda: _parts(store, key) >= 2, "two parts stored")
    store.kill()
    gate.set()
    rc = proc.wait(300)
    feeder.join()
    stderr = proc.stderr.read() if proc.stderr else b""
    assert rc == 6, stderr.decode()
    assert "object storage: cannot" in _error_line(stderr)
    # The abort could not reach the dead server: said so, with the upload id to clean up.
    assert "could not abort the upload" in stderr.decode()
    store.restart()
    assert not _exists(store, key)


# ---------------------------------------------------------------------------------------------------------------
# backups in object storage (mariadb10)


@pytest.fixture(scope="module")
def s3_backup(objstore, mariadb10) -> str:
    key = "db/mariadb10-full"
    run = _run(objstore, "backup", *_cli_conn(mariadb10), "--stream", "--to", f"s3://backups/{key}",
               "--part-size", "5")
    assert run.returncode == 0, run.stderr.decode()
    assert b"completed OK!" in run.stderr
    err = run.stderr.decode()
    assert err.index("object storage: wrote") < err.index("completed OK!")  # complete before the success line
    return key


@pytest.mark.mariadb
def test_backup_to_object_then_verify_list_extract(objstore, s3_backup, tmp_path):
    loc = f"s3://backups/{s3_backup}"
    assert not _uploads(objstore, s3_backup)
    ver = _run(objstore, "verify", loc)
    assert ver.returncode == 0, ver.stderr.decode()
    lst = _run(objstore, "list", loc)
    assert lst.returncode == 0, lst.stderr.decode()
    names = sorted(line.split(None, 1)[1] for line in lst.stdout.decode().splitlines())
    assert "xtrabackup_checkpoints" in names
    prefix = _run(objstore, "list", "s3://backups/db/")
    assert prefix.returncode == 0, prefix.stderr.decode()
    line = next(line for line in prefix.stdout.decode().splitlines() if line.endswith(s3_backup))
    assert " complete " in line
    assert "innostream mariadb 10.11" in line
    ext = _run(objstore, "extract", "-C", str(tmp_path / "x"), loc)
    assert ext.returncode == 0, ext.stderr.decode()
    got = sorted(str(p.relative_to(tmp_path / "x")) for p in (tmp_path / "x").rglob("*") if p.is_file())
    assert got == names
    # the same bytes through get | extract
    data = _run(objstore, "get", loc).stdout
    ext2 = subprocess.run([*INNOSTREAM, "extract", "-C", str(tmp_path / "y")], input=data, capture_output=True,
                          env=_env(objstore), timeout=600)
    assert ext2.returncode == 0, ext2.stderr.decode()
    for name in names:
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes(), name


@pytest.mark.mariadb
def test_truncated_and_bitflipped_objects_exit_3(objstore, s3_backup, tmp_path):
    client = _client(objstore)
    data = client.get_object(Bucket="backups", Key=s3_backup)["Body"].read()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    client.put_object(Bucket="backups", Key="bad/truncated", Body=data[: len(data) * 2 // 3])
    client.put_object(Bucket="backups", Key="bad/flipped", Body=bytes(flipped))
    for key in ("bad/truncated", "bad/flipped"):
        ver = _run(objstore, "verify", f"s3://backups/{key}")
        assert ver.returncode == 3, (key, ver.stderr.decode())
        _error_line(ver.stderr)
        ext = _run(objstore, "extract", "-C", str(tmp_path / key.replace("/", "-")), f"s3://backups/{key}")
        assert ext.returncode == 3, (key, ext.stderr.decode())
        _error_line(ext.stderr)


@pytest.mark.mariadb
def test_failed_backup_aborts_its_upload(objstore, mariadb10, tmp_path):
    key = "db/failed"
    run = _run(objstore, "backup", "--socket", str(tmp_path / "no.sock"), "--user", "root", "--stream", "--to",
               f"s3://backups/{key}")
    assert run.returncode == 4, run.stderr.decode()
    _error_line(run.stderr)
    assert not _exists(objstore, key)
    assert not _uploads(objstore, key)


def test_backup_to_wrong_bucket_fails_before_the_server(objstore, tmp_path):
    run = _run(objstore, "backup", "--socket", str(tmp_path / "no.sock"), "--stream", "--to", "s3://no-bucket/k")
    assert run.returncode == 6, run.stderr.decode()
    assert "NoSuchBucket" in _error_line(run.stderr)


# ---------------------------------------------------------------------------------------------------------------
# put --resume


def _killed_put(store, key: str, data: bytes) -> None:
    """Start a put of ``data`` and SIGKILL it once two parts are stored: the upload stays, unfinished."""
    proc = subprocess.Popen([*INNOSTREAM, "put", "--part-size", "5", f"s3://backups/{key}"], stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=_env(store))
    assert proc.stdin is not None
    proc.stdin.write(data[: 12 * MIB])
    proc.stdin.flush()
    _wait_for(lambda: _parts(store, key) >= 2, "two parts stored")
    proc.kill()
    proc.wait(60)
    assert not _exists(store, key)
    assert _uploads(store, key)


def test_put_resume_reuses_verified_parts(objstore, tmp_path):
    key = "resume/ok"
    data = os.urandom(27 * MIB + 999)
    _killed_put(objstore, key, data)
    src = tmp_path / "input"
    src.write_bytes(data)
    with src.open("rb") as inp:
        res = subprocess.run([*INNOSTREAM, "put", "--resume", f"s3://backups/{key}"], stdin=inp, capture_output=True,
                             env=_env(objstore), timeout=300)
    assert res.returncode == 0, res.stderr.decode()
    assert "stored before and verified" in res.stderr.decode()
    assert _client(objstore).get_object(Bucket="backups", Key=key)["Body"].read() == data
    assert not _uploads(objstore, key)


def test_put_resume_refuses_other_input(objstore, tmp_path):
    key = "resume/mismatch"
    _killed_put(objstore, key, os.urandom(20 * MIB))
    res = _run(objstore, "put", "--resume", f"s3://backups/{key}", input=os.urandom(20 * MIB))
    assert res.returncode == 6
    assert "does not match the input" in _error_line(res.stderr)
    assert not _exists(objstore, key)
    assert _uploads(objstore, key)  # kept for a resume with the right input
    none = _run(objstore, "put", "--resume", "s3://backups/resume/never-started", input=b"x")
    assert none.returncode == 6
    assert "no unfinished upload" in _error_line(none.stderr)


def test_download_resumes_after_server_restart(fresh_objstore):
    store = fresh_objstore
    data = os.urandom(64 * MIB)
    _client(store).put_object(Bucket="backups", Key="dl/big", Body=data)
    proc = subprocess.Popen([*INNOSTREAM, "get", "s3://backups/dl/big"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(store))
    assert proc.stdout is not None
    head = proc.stdout.read(MIB)  # get is now blocked on the pipe, its download mid-object
    store.kill()
    # reading on drains the ranges get fetched ahead (at most 5 x 8 MiB of the 64) and makes it ask for the next
    # ones while the store is down; they are retried until it is back
    rest: list[bytes] = []
    reader = threading.Thread(target=lambda: rest.append(proc.stdout.read()))  # type: ignore[union-attr]
    reader.start()
    time.sleep(3)
    store.restart()
    reader.join(120)
    assert proc.wait(120) == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert head + rest[0] == data
    assert "; retry" in (proc.stderr.read().decode() if proc.stderr else "")
