"""The installed layout: every package folder is listed in pyproject.toml under its import name, and the wheel's
import names all live under ``innostream`` (no generic top-level name like ``formats`` or ``streamer``)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed() -> None:
    cfg = _config()
    found = set()
    for name, folder in cfg["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            dotted = ".".join((name, *rel.parts)) if rel.parts else name
            if not any(dotted.startswith(other + ".") or dotted == other
                       for other in cfg["package-dir"] if other != name and other.startswith(name + ".")):
                found.add(dotted)
    assert found == set(cfg["packages"])


def test_wheel_has_only_the_innostream_namespace(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("innostream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"innostream"}
    assert "innostream/formats/fil0fil.py" in names
    assert "innostream/cli/__init__.py" in names


def test_python_m_innostream_runs_outside_the_repository(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "innostream", "--version"], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    assert res.stdout.startswith("innostream, version ")
