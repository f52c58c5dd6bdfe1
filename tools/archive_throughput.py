"""Measure the archive writer: stream a directory tree as an innostream archive (or xbstream) to stdout.

Emulates the backup's copiers: ``--copiers`` threads read files in 4 MiB blocks and call ``write`` concurrently.
Prints MB/s to stderr. Pair with ``/usr/bin/time -v`` for peak RSS, and with ``innostream extract``/``verify`` on
the other side of a pipe for the reader:

    python tools/archive_throughput.py DIR > /dev/null
    python tools/archive_throughput.py DIR | innostream extract -C /tmp/x
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from pathlib import Path

from innostream.archive import ArchiveWriter
from innostream.archive.xbstream import XbstreamWriter

BLOCK = 4 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("--copiers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="compression threads")
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--no-compress", action="store_true", help="store raw (like backup --compress=none)")
    ap.add_argument("--format", choices=["innostream", "xbstream"], default="innostream")
    args = ap.parse_args()
    out = sys.stdout.buffer
    cls = ArchiveWriter if args.format == "innostream" else XbstreamWriter
    meta = {"flavor": "mariadb", "tool": "archive_throughput"}
    kw = {"compress": False} if args.no_compress and cls is ArchiveWriter else {}
    w = cls(out, level=args.level, threads=args.threads, meta=meta, **kw)
    files = [p for p in sorted(args.src.rglob("*")) if p.is_file()]
    todo: queue.Queue[Path | None] = queue.Queue()
    for p in files:
        todo.put(p)
    total = 0
    lock = threading.Lock()

    def copier() -> None:
        nonlocal total
        while True:
            try:
                p = todo.get_nowait()
            except queue.Empty:
                return
            fid = w.begin_file(p.relative_to(args.src).as_posix())
            off = 0
            with open(p, "rb", buffering=0) as f:
                while block := f.read(BLOCK):
                    w.write(fid, off, block)
                    off += len(block)
            w.end_file(fid, off)
            with lock:
                total += off

    t0 = time.perf_counter()
    threads = [threading.Thread(target=copier) for _ in range(args.copiers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close({"from_lsn": 0, "to_lsn": 0})
    dt = time.perf_counter() - t0
    print(f"{args.format}: {len(files)} files, {total / 1e6:.0f} MB in {dt:.2f} s = {total / 1e6 / dt:.0f} MB/s",
          file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
