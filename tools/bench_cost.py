"""Cost of a backup to the server: sysbench throughput and latency during our backup and during the peer's.

Run by hand (minutes; never a timed test)::

    .venv/bin/python -m tools.bench_cost --size 1G --keep          # MariaDB 10.11, both tools at parallel 1 and 2
    .venv/bin/python -m tools.bench_cost --size 1G --keep --throttle 50 --rounds 3

``sysbench oltp_read_write`` (2 threads, one report per second) runs throughout; each contender's backup
(``--stream`` into zstd -1, written to a file, page cache as it is) starts after a warm-up, and the per-second
reports that fall inside the backup's wall time are averaged: tps, and p95 latency (sysbench's own per-second p95,
averaged over the window). A baseline window without any backup is measured the same way in every round. Rounds
alternate the contenders (A B C ... A B C ...) so drift in the machine hits all alike. Contenders: ours and
``mariadb-backup`` at ``--parallel 1`` and ``2``, ours at the defaults, and ours with ``--throttle`` when given.
The table goes to stdout (paste it into docs/BENCHMARKS.md with the date and the machine).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools.bench import (
    DEFAULT_WORKDIR,
    PEER_BACKUP,
    ours_backup,
    parse_size,
    peer_backup,
    prepare_dataset,
    run_pipeline,
    sysbench_argv,
)

REPORT_RE = re.compile(rb"^\[ (\d+)s \] thds: \d+ tps: ([\d.]+) .*lat \(ms,95%\): ([\d.]+)")
WARMUP = 8.0
BASELINE_SECONDS = 10.0


@dataclass
class Window:
    tps: float
    p95_ms: float
    wall: float


@dataclass
class Contender:
    name: str
    stages: list[list[str]]
    windows: list[Window] = field(default_factory=list)


def _stages(server, tool: str, parallel: int, throttle: float | None = None) -> list[list[str]]:
    if tool == "peer":
        return peer_backup(server, compress=True, parallel=parallel)
    extra = ["--no-fsync", "--parallel", str(parallel), *(["--throttle", str(throttle)] if throttle else [])]
    return ours_backup(server, compress=True, extra=extra)


class _Sysbench(threading.Thread):
    """sysbench's per-second reports with the monotonic time each line arrived."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__(daemon=True)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.reports: list[tuple[float, float, float]] = []  # (time, tps, p95 ms)

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = REPORT_RE.match(line)
            if m:
                self.reports.append((time.monotonic(), float(m.group(2)), float(m.group(3))))

    def window(self, t0: float, t1: float) -> Window:
        # a report at time t covers (t-1, t]: keep those wholly inside the window
        inside = [(tps, p95) for t, tps, p95 in self.reports if t0 + 1.0 <= t <= t1]
        if not inside:
            inside = [(tps, p95) for t, tps, p95 in self.reports if t0 <= t <= t1 + 1.0]
        return Window(statistics.mean(x[0] for x in inside), statistics.mean(x[1] for x in inside), t1 - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", default="mariadb10", choices=sorted(PEER_BACKUP))
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--throttle", type=float, default=None, help="also ours with --throttle MB/s")
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--keep", action="store_true", help="reuse a dataset loaded by tools.bench / an earlier run")
    args = ap.parse_args(argv)

    server, meta = prepare_dataset(args.kind, parse_size(args.size), args.workdir, args.keep)
    out = args.workdir / "cost"
    out.mkdir(parents=True, exist_ok=True)
    contenders = [Contender("innostream --parallel 1", _stages(server, "ours", 1)),
                  Contender("mariadb-backup --parallel=1 + zstd -1 -T0", _stages(server, "peer", 1)),
                  Contender("innostream --parallel 2 (default)", _stages(server, "ours", 2)),
                  Contender("mariadb-backup --parallel=2 + zstd -1 -T0", _stages(server, "peer", 2))]
    if args.throttle:
        contenders.append(Contender(f"innostream --throttle {args.throttle:g}",
                                    _stages(server, "ours", 2, args.throttle)))
    baseline: list[Window] = []
    sb = _Sysbench(sysbench_argv(server, "oltp_read_write", f"--tables={meta['tables']}",
                                 f"--table-size={meta['rows']}", "--threads=2", "--time=0", "--report-interval=1",
                                 "--percentile=95", "run"))
    sb.start()
    try:
        time.sleep(WARMUP)
        for r in range(args.rounds):
            t0 = time.monotonic()
            time.sleep(BASELINE_SECONDS)
            baseline.append(sb.window(t0, time.monotonic()))
            for c in contenders:
                t0 = time.monotonic()
                res = run_pipeline(c.stages, log_dir=out / "logs" / f"r{r}-{len(c.windows)}",
                                   stdout_path=out / "backup.out")
                t1 = time.monotonic()
                if not res.ok:
                    raise SystemExit(f"{c.name} failed: {[p.returncode for p in res.procs]} (logs in {out})")
                c.windows.append(sb.window(t0, t1))
                print(f"bench_cost: round {r + 1} {c.name}: {t1 - t0:.2f} s, tps {c.windows[-1].tps:.0f}, "
                      f"p95 {c.windows[-1].p95_ms:.1f} ms", file=sys.stderr, flush=True)
                time.sleep(3.0)  # let the server settle between backups
    finally:
        sb.proc.terminate()
        sb.proc.wait()
        server.stop()
    base_tps = statistics.median(w.tps for w in baseline)
    base_p95 = statistics.median(w.p95_ms for w in baseline)
    print(f"\n{args.kind}, {meta['data_bytes'] / 2**30:.2f} GiB sysbench dataset, oltp_read_write 2 threads, "
          f"{args.rounds} rounds alternated; medians")
    print("| contender | backup wall | tps during | tps vs baseline | p95 during | p95 vs baseline |")
    print("|---|---|---|---|---|---|")
    print(f"| no backup (baseline) | - | {base_tps:.0f} | 100% | {base_p95:.1f} ms | 1.00x |")
    for c in contenders:
        tps = statistics.median(w.tps for w in c.windows)
        p95 = statistics.median(w.p95_ms for w in c.windows)
        print(f"| {c.name} | {statistics.median(w.wall for w in c.windows):.2f} s | {tps:.0f} | "
              f"{tps / base_tps:.0%} | {p95:.1f} ms | {p95 / base_p95:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
