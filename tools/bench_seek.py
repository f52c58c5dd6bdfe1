"""Benchmark the seekable index (docs/FORMAT.md §10) on a local SeaweedFS (tools/objstore.py): one table out of an
object against the whole archive, and a whole extract from the object against ``get | extract``.

Run by hand (``python -m tools.bench --seek`` or ``python -m tools.bench_seek``), never as a timed test::

    .venv/bin/python -m tools.bench_seek --size 1G --tables 32 --runs 3

The archive is written by the real writer from synthetic tables (half random, half text per 16 KiB page, so zstd
stores about 55 % of it), uploaded once, then the contenders run alternated (A B C A B C …) as child processes:
wall time, peak RSS of the pipeline (the sum of each process's ``ru_maxrss`` from ``os.wait4``) and, for ours, the
bytes and requests fetched as the extract's own log line reports them.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PAGE = 16384


def _table(rnd: random.Random, size: int) -> bytes:
    text = b"".join(b"row %08d customer-%06d status=shipped " % (i, i % 997) for i in range(PAGE // 80))
    half = PAGE // 2
    return b"".join(rnd.randbytes(half) + text[:half] for _ in range(size // PAGE))


def write_archive(path: Path, size: int, tables: int) -> dict[str, int]:
    """A backup-like archive: ``tables`` tables of ``size / tables`` bytes copied by two threads, ibdata1, metadata."""
    sys.path.insert(0, str(REPO))
    from innostream.archive import ArchiveWriter

    rnd = random.Random(11)
    each = max(PAGE, size // tables // PAGE * PAGE)
    names = [f"db/t{i:03d}.ibd" for i in range(tables)]
    with path.open("wb") as out:
        w = ArchiveWriter(out, meta={"flavor": "mariadb"}, threads=2)

        def copy(part: list[str], seed: int) -> None:
            r = random.Random(seed)
            for name in part:
                fid = w.begin_file(name)
                for off in range(0, each, 4 * MiB):
                    w.write(fid, off, _table(r, min(4 * MiB, each - off)))
                w.end_file(fid, each)

        threads = [threading.Thread(target=copy, args=(names[i::2], i)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        w.add_bytes("ibdata1", _table(rnd, 12 * MiB))
        w.add_bytes("xtrabackup_checkpoints", b"backup_type = full-backuped\nfrom_lsn = 0\nto_lsn = 42\n")
        w.close({"from_lsn": 0, "to_lsn": 42, "backup_type": "full-backuped", "flavor": "mariadb"})
    return {"archive_bytes": path.stat().st_size, "table_bytes": each, "tables": tables}


def run(stages: list[list[str]], env: dict[str, str]) -> dict[str, Any]:
    """A pipeline of child processes: wall seconds, summed peak RSS, the last one's stderr."""
    start = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    prev = None
    for i, argv in enumerate(stages):
        last = i == len(stages) - 1
        p = subprocess.Popen(argv, stdin=prev, stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
        if prev is not None:
            prev.close()
        prev = p.stdout
        procs.append(p)
    errs = [threading.Thread(target=lambda p=p: setattr(p, "err", p.stderr.read())) for p in procs]  # type: ignore[union-attr]
    for t in errs:
        t.start()
    rss = 0
    codes = []
    for p in procs:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        codes.append(p.returncode)
        rss += usage.ru_maxrss * 1024
    wall = time.monotonic() - start
    for t in errs:
        t.join()
    err = b"".join(getattr(p, "err", b"") for p in procs).decode(errors="replace")
    if any(codes):
        raise RuntimeError(f"{stages} failed {codes}: {err[-2000:]}")
    m = re.search(r"reading (\d+) of its (\d+) bytes in (\d+) requests", err)
    return {"wall": wall, "rss": rss, "fetched": int(m[1]) if m else None, "requests": int(m[3]) if m else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_seek", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB of table data (default 1024)")
    parser.add_argument("--tables", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    from tools.objstore import start

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-seek-"))
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "a.isa"
    info = write_archive(archive, args.size * MiB, args.tables)
    print(f"archive: {info}", file=sys.stderr)
    store = start(work / "store")
    try:
        import boto3

        env = {**os.environ, "PYTHONPATH": str(REPO), **store.env()}
        client = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                              aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key)
        client.upload_file(str(archive), store.bucket, "bench/full")
        obj = f"s3://{store.bucket}/bench/full"
        ours = [sys.executable, "-m", "innostream"]
        one = "db/t007.ibd"
        contenders = {
            "object: extract --include one table": [[*ours, "extract", "--no-fsync", "--include", one, "-C", "{t}",
                                                     obj]],
            "object: extract whole (parallel ranges)": [[*ours, "extract", "--no-fsync", "-C", "{t}", obj]],
            "object: get | extract": [[*ours, "get", obj], [*ours, "extract", "--no-fsync", "-C", "{t}"]],
            "file: extract --include one table": [[*ours, "extract", "--no-fsync", "--include", one, "-C", "{t}",
                                                   str(archive)]],
            "file: extract whole": [[*ours, "extract", "--no-fsync", "-C", "{t}", str(archive)]],
        }
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in contenders}
        for i in range(args.runs):
            for name, stages in contenders.items():
                target = work / f"t-{i}-{len(results[name])}"
                r = run([[a.replace("{t}", str(target)) for a in argv] for argv in stages], env)
                shutil.rmtree(target)
                results[name].append(r)
                print(f"run {i + 1} {name}: {r}", file=sys.stderr)
        print(f"\nArchive {info['archive_bytes'] / MiB:.0f} MiB ({info['tables']} tables of "
              f"{info['table_bytes'] / MiB:.0f} MiB, zstd-1), {args.runs} runs alternated, median (min-max):\n")
        print("| test | wall s | peak RSS MiB | bytes fetched | requests |")
        print("|---|---|---|---|---|")
        for name, rs in results.items():
            walls = [r["wall"] for r in rs]
            fetched = rs[0]["fetched"]
            print(f"| {name} | {statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f}) | "
                  f"{max(r['rss'] for r in rs) / MiB:.0f} | "
                  f"{f'{fetched / MiB:.1f} MiB' if fetched is not None else 'all'} | "
                  f"{rs[0]['requests'] if rs[0]['requests'] is not None else '-'} |")
    finally:
        store.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

