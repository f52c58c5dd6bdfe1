"""What the archive writer's codec costs, with the server, the disks and the page cache taken away.

Run by hand::

    .venv/bin/python -m tools.bench_codec --datadir /tmp/innostream-bench/mariadb10-2048M/data --rounds 8

Every ``.ibd`` under ``--datadir`` is read into memory once. Write: the real
:class:`~innostream.archive.writer.ArchiveWriter` (two encoder threads, as a backup at ``--parallel 2`` has) makes an
archive of them in memory, once with zstd-1 and once with zstd-1 + AES-256-GCM in each round, the order alternating.
Read: the real reader checks each of the two archives as ``verify`` does (two threads: every frame checksum,
decryption, decompression, every file digest; no page validation, no disk), paired the same way. The process's CPU
seconds (user+sys) and wall are taken per run, and the encrypted run's extra over the plain run of the same round is
reported: on this shared VM the speed drifts by tens of percent within minutes, and only a pair run back to back
shares it. The full-pipeline counterpart, with the server and the disks, is ``tools.bench``'s paired encryption test.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import BinaryIO

from innostream.archive import crypt
from innostream.archive.codec import Codec, ZstdCodec
from innostream.archive.writer import ArchiveWriter
from innostream.extract import verify

CHUNK = 4 << 20  # what a copier thread hands the writer at a time


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_archive(blobs: list[tuple[str, bytes]], codec: Codec, threads: int,
                  out: BinaryIO) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and stored bytes of one archive of ``blobs`` written to ``out``."""
    t0, c0 = time.monotonic(), _cpu()
    w = ArchiveWriter(out, codec=codec, threads=threads)
    for name, data in blobs:
        fid = w.begin_file(name)
        view = memoryview(data)
        for off in range(0, len(data), CHUNK):
            w.write(fid, off, view[off : off + CHUNK])
        w.end_file(fid, len(data))
    w.close()
    return time.monotonic() - t0, _cpu() - c0, w.stored_bytes


def read_archive(archive: bytes, key: bytes | None, threads: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and archive bytes of checking ``archive`` as ``verify`` does."""
    t0, c0 = time.monotonic(), _cpu()
    summary = verify(io.BytesIO(archive), parallel=threads, key=key)
    if summary.warnings:
        raise SystemExit(f"verify warned: {summary.warnings}")
    return time.monotonic() - t0, _cpu() - c0, len(archive)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_codec", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datadir", type=Path, required=True, help="a data directory whose .ibd files to encode")
    parser.add_argument("--rounds", type=int, default=8, help="pairs of runs (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="encoder threads (default 2)")
    args = parser.parse_args(argv)
    paths = sorted(args.datadir.rglob("*.ibd"))
    if not paths:
        parser.error(f"no .ibd file under {args.datadir}")
    blobs = [(str(p.relative_to(args.datadir)), p.read_bytes()) for p in paths]
    total = sum(len(b) for _, b in blobs)
    print(f"{len(blobs)} tablespaces, {total / 2**20:.0f} MiB in memory; {args.rounds} rounds, "
          f"{args.threads} encoder threads", file=sys.stderr)
    key = os.urandom(32)
    names = ("zstd-1", "zstd-1 + AES-256-GCM")
    writes: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
    reads: dict[str, list[tuple[float, float, int]]] = {n: [] for n in names}
    archives: dict[str, bytes] = {}
    for i in range(args.rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            codec: Codec = ZstdCodec(1)
            if name != "zstd-1":
                codec = crypt.new_codec(codec, key)
            buf = io.BytesIO()
            writes[name].append(write_archive(blobs, codec, args.threads, buf))
            archives[name] = buf.getvalue()
            wall, cpu, stored = writes[name][-1]
            print(f"  round {i + 1}: write {name:<22} {wall:6.2f} s wall {cpu:6.2f} s CPU {stored / 2**20:.0f} MiB",
                  file=sys.stderr)
        for name in names[::-1] if i % 2 == 0 else names:
            reads[name].append(read_archive(archives[name], key if name != "zstd-1" else None, args.threads))
            wall, cpu, _ = reads[name][-1]
            print(f"  round {i + 1}: read  {name:<22} {wall:6.2f} s wall {cpu:6.2f} s CPU", file=sys.stderr)
    print("| direction | codec | wall s (median) | CPU s (median) | archive |\n|---|---|---:|---:|---:|")
    for direction, runs in (("write", writes), ("read", reads)):
        for name, rs in runs.items():
            print(f"| {direction} | {name} | {statistics.median(r[0] for r in rs):.2f} | "
                  f"{statistics.median(r[1] for r in rs):.2f} | {rs[0][2] / 2**20:.0f} MiB |")
    print()
    for direction, runs in (("write", writes), ("read", reads)):
        plain, sealed = runs.values()
        cpu_extra = [b[1] - a[1] for a, b in zip(plain, sealed, strict=True)]
        wall_extra = [b[0] / a[0] - 1 for a, b in zip(plain, sealed, strict=True)]
        med_cpu = statistics.median(cpu_extra)
        print(f"{direction.capitalize()}, paired over {args.rounds} rounds: AES-256-GCM adds {med_cpu:+.2f} CPU s "
              f"(median; {min(cpu_extra):+.2f} to {max(cpu_extra):+.2f}) = {med_cpu / (sealed[0][2] / 1e9):.2f} CPU "
              f"s per GB of archive, and {statistics.median(wall_extra):+.1%} wall (median; "
              f"{min(wall_extra):+.1%} to {max(wall_extra):+.1%}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
