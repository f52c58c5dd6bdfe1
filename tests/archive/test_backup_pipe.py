"""The real thing: `innostream backup --stream | innostream extract` (and `--format xbstream | mbstream -x`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.archive.builders import PY, REPO, run_cli, tree


def _backup_cmd(server, *extra: str) -> str:
    return f"cd {REPO} && {PY} -m innostream -q backup --stream -S {server.socket} -u root {' '.join(extra)}"


def test_backup_stream_into_extract(server, tmp_path: Path):
    target = tmp_path / "t"
    r = subprocess.run(["bash", "-o", "pipefail", "-c",
                        f"{_backup_cmd(server)} | {PY} -m innostream extract -C {target} --parallel 2"],
                       capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = tree(target)
    assert "xtrabackup_checkpoints" in got
    assert any(name.startswith("sample/") and name.endswith(".ibd") for name in got)


def test_backup_xbstream_into_real_mbstream_and_ours(mariadb10, tmp_path: Path):
    stream = subprocess.run(["bash", "-o", "pipefail", "-c", _backup_cmd(mariadb10, "--format", "xbstream")],
                            capture_output=True, timeout=600)
    assert stream.returncode == 0, stream.stderr[-3000:]
    ref = tmp_path / "ref"
    ref.mkdir()
    names = {line.split()[-1] for line in run_cli(["list", "-"], stdin=stream.stdout).stdout.decode().splitlines()}
    for d in {n.rpartition("/")[0] for n in names if "/" in n}:  # mbstream -x creates one directory level only
        (ref / d).mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mbstream", "-x"], input=stream.stdout, cwd=ref, capture_output=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    ours = run_cli(["extract", "-C", str(tmp_path / "ours")], stdin=stream.stdout)
    assert ours.returncode == 0, ours.stderr
    assert tree(tmp_path / "ours") == tree(ref)
    assert "xtrabackup_checkpoints" in tree(ref)
