"""The cost of durability: ``innostream extract`` of one real archive with fsync (the default) and with
``--no-fsync``, alternated in the same run (A B A B ...), like :mod:`tools.bench`. Run by hand, never as a test::

    .venv/bin/python -m tools.bench_fsync --size 300M --runs 3 --keep

It loads (or, with ``--keep``, reuses) a sysbench dataset on a sandbox MariaDB 10.11 server (:func:`tools.bench.
prepare_dataset`), streams one backup of it into a file, stops the server, then times the two extractions. Before
each run the target is empty, earlier writes are synced (``sync``) and the archive is in the page cache, so each
run pays for its own write-back only. Prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

from tools.bench import (
    DEFAULT_WORKDIR,
    Series,
    _extract_runner,
    alternate,
    data_bytes,
    human,
    innostream_argv,
    log,
    parse_size,
    prepare_dataset,
    show,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="300M", help="dataset size (default 300M)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kind", default="mariadb10")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--keep", action="store_true", help="reuse a loaded dataset")
    args = parser.parse_args()
    server, meta = prepare_dataset(args.kind, parse_size(args.size), args.workdir, args.keep)
    out = args.workdir / "fsync"
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "backup.inno"
    try:
        with archive.open("wb") as f:
            subprocess.run([*innostream_argv(), "backup", "--stream", f"--socket={server.socket}", "--user=root",
                            f"--datadir={server.datadir}"], stdout=f, stderr=subprocess.DEVNULL, check=True)
    finally:
        server.stop()
    log(f"archive {human(archive.stat().st_size)} of {human(meta['data_bytes'])} of data")
    contenders = []
    for tool, extra in (("fsync (default)", []), ("--no-fsync", ["--no-fsync"])):
        target = out / ("x-" + ("sync" if not extra else "nosync"))
        stages = [[*innostream_argv(), "extract", *extra, "-C", str(target)]]
        contenders.append((Series("extract", tool, show(stages, stdin=archive.name)),
                           _extract_runner(stages, archive, target, out / "logs" / tool.split()[0])))
    alternate(args.runs, contenders)
    size = data_bytes(out / "x-sync")
    print(f"\n{args.kind} {meta.get('version', '')}: archive {human(archive.stat().st_size)}, extracted "
          f"{human(size)}, {args.runs} runs each, alternated\n")
    print("| extract | wall (median) | wall (range) | CPU s (median) |")
    print("|---|---|---|---|")
    for s, _ in contenders:
        walls = [r.wall for r in s.runs]
        print(f"| {s.tool} | {statistics.median(walls):.2f} s | {min(walls):.2f}-{max(walls):.2f} s | "
              f"{s.med('cpu'):.2f} |")


if __name__ == "__main__":
    main()
