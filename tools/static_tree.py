"""Lay out the installed import names for static tools: ``.venv/static/innostream`` mirrors streamer/ and
``.venv/static/innostream/formats`` mirrors formats/, one symlink per file.

The editable install maps ``innostream`` to streamer/ with an import hook that mypy and import-linter do not run, so
they read this tree instead (``tools/test.sh`` rebuilds it before each run; it is cheap). Run as
``python -m tools.static_tree`` from the repository root; prints the tree's root.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: import package -> repository folder (the same mapping as pyproject.toml's package-dir)
PACKAGE_DIR = {"innostream": REPO / "streamer", "innostream/formats": REPO / "formats"}


def build(root: Path = REPO / ".venv" / "static") -> Path:
    """(Re)build the tree under ``root`` and return it."""
    if root.exists():
        shutil.rmtree(root)
    for package, folder in PACKAGE_DIR.items():
        for src in folder.rglob("*"):
            if src.is_dir() or "__pycache__" in src.parts or src.suffix not in (".py", ".typed"):
                continue
            dst = root / package / src.relative_to(folder)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    return root


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / ".venv" / "static"))
