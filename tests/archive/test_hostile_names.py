"""Hostile member names (issue 14): thousands of path components, and names that would forge listing lines."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
import xxhash
from innostream.archive.xbstream import XbstreamWriter
from innostream.formats import archive as fa

from tests.archive.builders import frame, make_archive, run_cli, split_frames
from tests.archive.test_corruption import build

DEEP = "/".join(["d"] * 1200) + "/t.ibd"


@pytest.mark.parametrize("command", ["extract", "verify", "list"])
def test_a_name_of_1200_components_is_one_line_and_exit_6(tmp_path: Path, command: str):
    """Before: extract crashed with RecursionError and a traceback (exit 1); then, made iterative, it created 1200
    nested directories. A name has at most 255 components: refused like any unsafe name."""
    head, frames = split_frames(make_archive({"ok.ibd": b"x" * 100}))
    data = b"y" * 100  # the writer refuses such a name: frames by hand, with valid checksums
    deep = [frame(fa.FRAME_FILE_BEGIN, 2, 3, fa.build_file_begin(DEEP, 0o640)),
            frame(fa.FRAME_DATA, 2, 4, data),
            frame(fa.FRAME_FILE_END, 2, 5, fa.build_file_end(len(data), 1, xxhash.xxh3_128_digest(data)))]
    files = [["ok.ibd", 100, xxhash.xxh3_128_hexdigest(b"x" * 100)], [DEEP, 100, xxhash.xxh3_128_hexdigest(data)]]
    blob = build(frames[:3] + deep, head, info={"files": files})  # a consistent archive but for the name
    target = tmp_path / "t"
    r = run_cli([command, "-"] + (["-C", str(target)] if command == "extract" else []), stdin=blob)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 6, r.stderr[-2000:]
    assert len(lines) == 1, lines[:3]
    assert "1201 path components (at most 255)" in lines[0]
    assert len(lines[0]) < 400  # the name is shown cut short
    if command == "extract":
        assert not (target / "d").exists()


def test_a_name_of_255_components_is_still_fine(tmp_path: Path):
    name = "/".join(["d"] * 254) + "/t.ibd"
    r = run_cli(["extract", "-C", str(tmp_path / "t"), "-"], stdin=make_archive({name: b"z" * 10}))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "t" / name).read_bytes() == b"z" * 10


#: names that would forge a listing line, hide text, or colour a terminal; each a real file name for GNU tar too
NAMES = [
    "db/evil\n             4 forged.ibd",
    "db/back\\slash.ibd",
    "db/esc\x1b[31mred.ibd",
    "db/tab\tcr\rdel\x7f.ibd",
    "db/caf\u00e9.ibd",
]


def _gnu_tar_listing(tmp_path: Path) -> list[str]:
    """What GNU tar prints for the same names (tar's default quoting style, in a UTF-8 locale)."""
    src = tmp_path / "src"
    (src / "db").mkdir(parents=True)
    for name in NAMES:
        (src / name).write_bytes(b"data")
    tar = tmp_path / "t.tar"
    subprocess.run(["tar", "cf", str(tar), "-C", str(src), *NAMES], check=True)
    out = subprocess.run(["tar", "tf", str(tar)], capture_output=True, check=True,
                         env=dict(os.environ, LC_ALL="C.UTF-8"))
    return out.stdout.decode().splitlines()


def _archives() -> dict[str, bytes]:
    files = {name: b"data" for name in NAMES}
    xb = io.BytesIO()
    w = XbstreamWriter(xb)
    for name, data in files.items():
        w.add_bytes(name, data)
    w.close()
    return {"innostream": make_archive(files), "xbstream": xb.getvalue()}


@pytest.mark.parametrize("fmt", ["innostream", "xbstream"])
@pytest.mark.parametrize("long_", [False, True], ids=["list", "list-l"])
def test_list_escapes_names_as_gnu_tar_does(tmp_path: Path, fmt: str, long_: bool):
    """Before: names were printed raw, so the first name forged a second listing line (exit 0)."""
    expected = _gnu_tar_listing(tmp_path)
    assert len(expected) == len(NAMES)
    r = run_cli(["list", *(["-l"] if long_ else []), "-"], stdin=_archives()[fmt])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == len(NAMES), lines  # one line per member, whatever the names hold
    shown = [line.split(maxsplit=3 if long_ else 1)[-1] for line in lines]
    assert shown == expected
    assert "\x1b" not in r.stdout.decode()
