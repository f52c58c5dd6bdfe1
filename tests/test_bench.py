"""The benchmark harness's own machinery: pipeline measurement, lag arithmetic, report rendering.

The benchmark itself runs by hand (``python -m tools.bench``); these tests keep its measuring honest with real
processes whose CPU, memory and output are known in advance.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pytest

from tools import bench

PY = sys.executable


def test_pipeline_counts_bytes_cpu_and_rss_of_every_stage(tmp_path: Path) -> None:
    # Stage 1 holds ~80 MiB and burns CPU, then writes 3 MiB; stage 2 copies it through.
    producer = (
        "import sys, time\n"
        "blob = bytearray(80 * 1024 * 1024)\n"
        "for i in range(0, len(blob), 4096): blob[i] = 1\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "sys.stdout.buffer.write(b'x' * (3 * 1024 * 1024))\n"
    )
    out = tmp_path / "out"
    res = bench.run_pipeline([[PY, "-c", producer], ["cat"]], log_dir=tmp_path / "logs", stdout_path=out)
    assert res.ok
    assert [p.argv0 for p in res.procs] == [Path(PY).name, "cat"]
    assert res.out_bytes == 3 * 1024 * 1024 == out.stat().st_size
    assert res.procs[0].maxrss >= 80 * bench.MiB
    assert res.procs[1].maxrss < 40 * bench.MiB
    assert res.rss_sum == res.procs[0].maxrss + res.procs[1].maxrss
    assert res.procs[0].user + res.procs[0].sys >= 0.3
    assert res.cpu >= 0.3
    assert res.wall >= 0.3
    assert res.tree_rss_peak >= 50 * bench.MiB  # the sampler saw the big stage while it was alive
    # The machine was at least as busy as the pipeline (tick granularity: 10 ms per core).
    assert res.machine_cpu >= res.cpu - 0.05
    assert res.other_cpu >= 0


def test_pipeline_reports_failures_and_feeds_stdin(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.write_bytes(b"hello\n" * 1000)
    res = bench.run_pipeline([["cat"], ["sh", "-c", "cat >/dev/null; echo oops >&2; exit 3"]],
                             log_dir=tmp_path / "logs", stdin_path=src)
    assert not res.ok
    assert [p.returncode for p in res.procs] == [0, 3]
    assert Path(res.stderr_paths[1]).read_bytes() == b"oops\n"


def test_pipeline_streams_first_stage_stderr_lines_with_times(tmp_path: Path) -> None:
    script = "import sys, time\nfor i in range(3):\n print(f'>> log scanned up to ({100 + i})', file=sys.stderr," \
             " flush=True)\n time.sleep(0.2)\n"
    seen: list[tuple[float, bytes]] = []
    t0 = time.monotonic()
    res = bench.run_pipeline([[PY, "-c", script]], log_dir=tmp_path, on_stderr_line=lambda t, ln: seen.append((t, ln)))
    assert res.ok
    assert [bench.LOG_SCANNED_RE.search(ln).group(1) for _, ln in seen] == [b"100", b"101", b"102"]
    times = [t for t, _ in seen]
    assert t0 <= times[0] < times[1] < times[2]
    assert times[2] - times[0] >= 0.35  # stamped on arrival, not after the process ended
    assert Path(res.stderr_paths[0]).read_bytes().count(b"log scanned") == 3


def test_pipeline_timeout_kills(tmp_path: Path) -> None:
    res = bench.run_pipeline([["sleep", "30"]], log_dir=tmp_path, timeout=0.5)
    assert res.wall < 10
    assert res.procs[0].returncode == -9


@pytest.mark.parametrize(
    ("text", "size"),
    [("200M", 200 * bench.MiB), ("2G", 2 * bench.GiB), ("1.5g", 3 * bench.GiB // 2), ("4096", 4096),
     ("20GiB", 20 * bench.GiB)],
)
def test_parse_size(text: str, size: int) -> None:
    assert bench.parse_size(text) == size


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(Exception, match="not a size"):
        bench.parse_size("lots")


def test_plan_tables_hits_the_size() -> None:
    for size in (200 * bench.MiB, 2 * bench.GiB, 20 * bench.GiB):
        tables, rows = bench.plan_tables(size)
        assert 4 <= tables <= 32
        assert abs(tables * rows * bench.BYTES_PER_ROW - size) / size < 0.01


def test_peer_tail_line_is_parsed() -> None:
    line = b"[00] 2026-11-24 09:06:21 Redo log (from LSN 146247513 to 211232149) was copied.\n"
    m = bench.PEER_COPIED_RE.search(line)
    assert int(m.group(m.lastindex)) == 211232149
    m = bench.LOG_SCANNED_RE.search(b"[00] 2024-05-10 10:11:12 >> log scanned up to (123456)\n")
    assert int(m.group(m.lastindex)) == 123456


def test_lag_report_interpolates_server_lsn() -> None:
    # Server writes 1000 bytes/s of redo; the copier starts at t=1.0 from LSN 10_000 (its checkpoint) and reports
    # at 1.5, 2.0 and 3.0 s.
    samples = [(0.0, 10_000), (1.0, 11_000), (2.0, 12_000), (3.0, 13_000)]
    scanned = [(1.5, 11_200), (2.0, 11_900), (3.0, 12_900)]
    rep = bench.lag_report(scanned, samples, capacity=2_000, t_start=0.8, t_end=3.5, start=(1.0, 10_000))
    assert rep["redo_rate"] == pytest.approx(1000)
    assert rep["lag_at_lines_max"] == 300  # 11_500 - 11_200 at t=1.5
    assert rep["lag_at_lines_median"] == 100
    # Just before each line: 11_500 - 10_000, 12_000 - 11_200, 13_000 - 11_900.
    assert rep["max_lag"] == 1_500
    assert rep["max_lag_share"] == pytest.approx(0.75)
    assert rep["steady_max_lag"] == 1_100  # after the first line
    assert rep["steady_share"] == pytest.approx(0.55)
    assert rep["start_age"] == 1_000  # 11_000 - 10_000 when the copier started
    assert rep["catch_up"] == pytest.approx(0.5)
    assert rep["server_lsn_start"] == 10_800
    assert rep["server_lsn_end"] == 13_000  # past the last sample: the last sample
    assert rep["max_gap"] == pytest.approx(1.0)  # 2.0 -> 3.0 (start 1.0 -> 1.5 is shorter)
    r = {**rep, "kept_up": True}
    assert bench.kept_up_label(r) == "barely (15% of capacity at a line, up to 55% between lines)"
    assert bench.kept_up_label({**r, "steady_share": 0.1}) == "yes"
    assert bench.kept_up_label({**r, "steady_share": 0.1, "lag_at_lines_max": 1_200}) == (
        "barely (60% of capacity at a line, up to 10% between lines)")
    assert bench.kept_up_label({**r, "kept_up": False}) == "**no**"


def test_lag_report_without_start_has_no_upper_bound_for_one_line() -> None:
    # The peer prints one line at the end: its lag at that line is known, an upper bound is not.
    rep = bench.lag_report([(2.0, 11_900)], [(0.0, 10_000), (3.0, 13_000)], capacity=10_000, t_start=0, t_end=3)
    assert rep["lag_at_lines_max"] == 100
    assert "max_lag" not in rep


def test_lag_report_without_progress_lines() -> None:
    rep = bench.lag_report([], [(0.0, 1), (1.0, 5)], capacity=10, t_start=0, t_end=1)
    assert rep["scanned_lines"] == 0
    assert "max_lag" not in rep


def _series(test: str, tool: str, wall: float, rss: int, out: int, ok: bool = True) -> dict:
    return {"test": test, "tool": tool, "command": f"{tool} {test}", "ok": ok, "runs": 2, "wall": wall,
            "wall_min": wall, "wall_max": wall, "cpu": wall / 2, "rss_sum": rss, "tree_rss_peak": rss,
            "out_bytes": out}


def test_ratios_targets_and_render() -> None:
    series = [
        _series("backup zstd-1", "innostream", 9.0, 100 * bench.MiB, 1030),
        _series("backup zstd-1", "mariadb-backup", 10.0, 60 * bench.MiB, 1000),
        _series("extract zstd-1", "innostream", 12.0, 300 * bench.MiB, 5000),
        _series("extract zstd-1", "mariadb-backup", 10.0, 50 * bench.MiB, 5000),
        _series("backup validation", "innostream", 10.0, 90 * bench.MiB, 0),
        _series("backup validation", "innostream --no-validate", 9.5, 90 * bench.MiB, 0),
    ]
    kind = {"kind": "mariadb10", "version": "10.11.19", "series": series, "notes": ["a note"],
            "dataset": {"tables": 4, "rows": 10, "data_bytes": 2 * bench.GiB, "table_bytes": bench.GiB},
            "load": [{"tool": "innostream", "ok": True, "wall": 20.0, "sysbench_tps": 900.0, "redo_rate": bench.MiB,
                      "max_lag": 5 * bench.MiB, "lag_at_lines_max": bench.MiB, "lag_at_lines_median": bench.MiB,
                      "capacity": 96 * bench.MiB,
                      "max_lag_share": 5 / 96, "scanned_lines": 20, "max_gap": 1.2, "kept_up": True,
                      "returncodes": [0], "sysbench": "sysbench oltp_write_only run", "command": "innostream backup"}]}
    kind["ratios"] = bench.compute_ratios(series)
    by_test = {r["test"]: r for r in kind["ratios"]}
    assert by_test["backup zstd-1"]["wall"] == pytest.approx(0.9)
    assert by_test["extract zstd-1"]["wall"] == pytest.approx(1.2)
    assert by_test["backup zstd-1"]["bytes"] == pytest.approx(1.03)
    targets = {t["target"]: t for t in bench.compute_targets(kind)}
    assert targets["backup zstd-1: wall ours/peer <= 1.0"]["met"] == "yes"
    assert targets["extract zstd-1: wall ours/peer <= 1.0"]["met"] == "**no**"
    assert targets["compressed size within 5% of zstd -1"]["met"] == "yes"
    assert targets["peak RSS < 256.0 MiB"]["met"] == "**no**"  # the extract's 300 MiB
    assert targets["page validation < 10% of backup time"]["measured"] == "5.0%"
    assert targets["log copier keeps up under sysbench load"]["met"] == "yes"
    kind["targets"] = list(targets.values())
    env = {"date": "now", "cores": 2, "cpu": "cpu", "memory": bench.GiB, "kernel": "k", "python": "3.11",
           "loadavg_start": (1.0, 1.0, 1.0), "loadavg_end": (2.0, 2.0, 2.0), "innostream": "0.1",
           "mariadb-backup": "mb", "zstd": "z", "sysbench": "s"}
    text = bench.render({"environment": env, "runs": 2, "command": "python -m tools.bench", "kinds": [kind]})
    assert "| backup zstd-1 | innostream | yes | 9.00 |" in text
    assert "| extract zstd-1 | 1.20 |" in text
    assert "mariadb-backup backup zstd-1" in text  # exact commands listed
    assert "* a note" in text
    row = ("| innostream | yes | 20.00 | 900 | 1.0 MiB/s | 96.0 MiB | – | – | 1.0 MiB / 1.0 MiB | 5.0 MiB / – | 20 "
           "| 1.2 | yes |")
    assert row in text


def test_failed_series_gets_no_ratio() -> None:
    series = [_series("backup zstd-1", "innostream", 1.0, 1, 1, ok=False),
              _series("backup zstd-1", "mariadb-backup", 1.0, 1, 1)]
    assert bench.compute_ratios(series) == []


def test_feature_costs_and_encryption_target() -> None:
    series = [
        _series(bench.FEATURES_BACKUP, "innostream", 10.0, 100 * bench.MiB, 800),
        _series(bench.FEATURES_BACKUP, "innostream --lock-ddl=full", 9.0, 100 * bench.MiB, 800),
        _series(bench.FEATURES_BACKUP, "innostream encrypted", 10.5, 110 * bench.MiB, 801),
        _series(bench.FEATURES_BACKUP, "tar | zstd -1", 5.0, 20 * bench.MiB, 790, ok=False),
        _series(bench.FEATURES_EXTRACT, "innostream", 4.0, 60 * bench.MiB, 2000),
        _series(bench.FEATURES_EXTRACT, "innostream encrypted", 4.8, 60 * bench.MiB, 2000),
        _series("backup zstd-1", "innostream --lock-ddl=full", 1.0, 1, 1),  # not a feature test: no cost row
    ]
    costs = {(c["test"], c["tool"]): c for c in bench.feature_costs(series)}
    assert set(costs) == {(bench.FEATURES_BACKUP, "innostream --lock-ddl=full"),
                          (bench.FEATURES_BACKUP, "innostream encrypted"),
                          (bench.FEATURES_EXTRACT, "innostream encrypted")}  # the failed tar row has none
    assert costs[(bench.FEATURES_BACKUP, "innostream encrypted")]["wall"] == pytest.approx(1.05)
    assert costs[(bench.FEATURES_BACKUP, "innostream encrypted")]["rss"] == pytest.approx(1.1)
    targets = {t["target"]: t for t in bench.compute_targets({"series": series})}
    assert targets["backup zstd-1: encryption adds < 10% wall"]["met"] == "yes"
    assert targets["extract zstd-1: encryption adds < 10% wall"]["met"] == "**no**"  # +20 %
    env = {"date": "now", "cores": 2, "cpu": "cpu", "memory": bench.GiB, "kernel": "k", "python": "3.11",
           "loadavg_start": (1.0, 1.0, 1.0), "innostream": "0.1", "mariadb-backup": "mb", "zstd": "z",
           "sysbench": "s"}
    kind = {"kind": "mariadb10", "version": "10.11", "series": series,
            "dataset": {"tables": 4, "rows": 10, "data_bytes": bench.GiB, "table_bytes": bench.GiB}}
    text = bench.render({"environment": env, "runs": 3, "command": "c", "kinds": [kind]})
    assert f"| {bench.FEATURES_BACKUP} | innostream --lock-ddl=full | -10% | -10% | +0% |" in text
    assert f"| {bench.FEATURES_EXTRACT} | innostream encrypted | +20% | +20% | +0% |" in text
    assert f"| {bench.FEATURES_BACKUP} | tar \\| zstd -1 | **no** |" in text  # a pipe in a cell is escaped


def test_alternate_runs_a_balanced_order() -> None:
    order: list[str] = []

    def runner(name: str):
        def run(i: int) -> bench.PipelineResult:
            order.append(name)
            return bench.PipelineResult(wall=1.0, procs=[], tree_rss_peak=0, out_bytes=0)
        return run

    contenders = [(bench.Series("t", name, name), runner(name)) for name in "ABCD"]
    bench.alternate(4, contenders)
    rounds = ["".join(order[i:i + 4]) for i in range(0, 16, 4)]
    assert rounds == ["ABDC", "BCAD", "CDBA", "DACB"]
    assert all(len(s.runs) == 4 for s, _ in contenders)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_balanced_orders_put_each_contender_first_and_after_each_other_equally(n: int) -> None:
    from collections import Counter

    cycle = n if n % 2 == 0 else 2 * n
    orders = bench.balanced_orders(n, 2 * cycle)
    assert orders[:cycle] == orders[cycle:]
    assert all(sorted(o) == list(range(n)) for o in orders)
    firsts = Counter(o[0] for o in orders[:cycle])
    follows = Counter((a, b) for o in orders[:cycle] for a, b in itertools.pairwise(o))
    assert set(firsts) == set(range(n))
    assert len(set(firsts.values())) == 1
    if n > 1:  # every ordered pair of two contenders is neighbours equally often
        assert len(follows) == n * (n - 1)
        assert len(set(follows.values())) == 1


def test_paired_encryption_costs_take_the_ratio_per_round() -> None:
    def run(wall: float, cpu: float, rc: int = 0) -> dict:
        return {"wall": wall, "procs": [{"user": cpu, "sys": 0.0, "returncode": rc}]}

    plain = _series(bench.ENCRYPTION_BACKUP, "innostream", 10.0, 100 * bench.MiB, 800)
    sealed = _series(bench.ENCRYPTION_BACKUP, "innostream encrypted", 10.0, 100 * bench.MiB, 801)
    # the machine slows down over the rounds: the medians of the runs would hide a pair's ratio, the pairs do not
    plain["detail"] = [run(10.0, 10.0), run(20.0, 20.0), run(30.0, 30.0), run(5.0, 5.0, rc=1)]
    sealed["detail"] = [run(10.5, 10.2), run(21.0, 21.0), run(33.0, 31.5), run(1.0, 1.0)]
    (p,) = bench.paired_costs([plain, sealed])
    assert p["pairs"] == 3  # the round with a failed run is left out
    assert p["wall"] == pytest.approx(1.05)
    assert p["wall_min"] == pytest.approx(1.05)
    assert p["wall_max"] == pytest.approx(1.10)
    assert p["cpu"] == pytest.approx(1.05)
    targets = {t["target"]: t for t in bench.compute_targets({"series": [plain, sealed]})}
    assert targets["backup zstd-1: encryption adds < 10% wall"]["met"] == "yes"
    assert "median of 3 paired runs" in targets["backup zstd-1: encryption adds < 10% wall"]["measured"]


def test_write_doc_keeps_hand_written_text(tmp_path: Path) -> None:
    doc = tmp_path / "B.md"
    bench.write_doc(doc, "first table")
    assert "first table" in doc.read_text()
    doc.write_text(doc.read_text().replace("# Benchmarks", "# Benchmarks\n\nintro by hand") + "\n## Analysis\nmine\n")
    bench.write_doc(doc, "second table")
    text = doc.read_text()
    assert "second table" in text
    assert "first table" not in text
    assert "intro by hand" in text
    assert text.rstrip().endswith("## Analysis\nmine")


def test_tree_rss_sees_grandchildren(tmp_path: Path) -> None:
    # sh -> python (holds 60 MiB): wait4 on sh would fold it in, the sampler must see it live.
    script = "b = bytearray(60 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nimport time; time.sleep(0.6)"
    res = bench.run_pipeline([["sh", "-c", f'"{PY}" -c "$0"; true', script]], log_dir=tmp_path, sample_interval=0.05)
    assert res.ok
    assert res.tree_rss_peak >= 60 * bench.MiB


def test_server_lsn_advances_and_redo_capacity(server) -> None:
    """The two server probes the load phase relies on, on every kind (the same status line on both flavours)."""
    conn = server.connect()
    try:
        before = bench.server_lsn(conn)
        server.execute("CREATE TABLE IF NOT EXISTS sample.bench_probe (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT)")
        server.execute("INSERT INTO sample.bench_probe (v) VALUES (REPEAT('x', 5000))")
        after = bench.server_lsn(conn)
    finally:
        server.execute("DROP TABLE IF EXISTS sample.bench_probe")
        conn.close()
    assert after > before > 0
    capacity = bench.redo_capacity(server)
    assert 8 * bench.MiB <= capacity <= 4 * bench.GiB


def test_measure_validation_times_real_tablespaces(mariadb10) -> None:
    rep = bench.measure_validation(mariadb10.datadir, mariadb10.flavor)
    assert rep["files"] >= 3  # ibdata1, undo, mysql/*.ibd and the sample tables
    # 16K pages, and 8K ones for the sample schema's ROW_FORMAT=COMPRESSED KEY_BLOCK_SIZE=8 table once MariaDB has
    # flushed its page 0 (until then the file is all zeros and read as 16K pages)
    assert rep["bytes"] % 8192 == 0
    assert rep["pages"] * 8192 <= rep["bytes"] <= rep["pages"] * 16384
    assert rep["seconds"] > 0
    assert rep["flagged_pages"] == 0


def _resident_fraction(path: Path) -> float:
    """Share of the file's pages in the page cache (mincore(2) on a private mapping)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_COPY)
        try:
            buf = (ctypes.c_char * size).from_buffer(mm)
            vec = (ctypes.c_ubyte * pages)()
            assert libc.mincore(ctypes.c_void_p(ctypes.addressof(buf)), ctypes.c_size_t(size), vec) == 0
            del buf
        finally:
            mm.close()
    return sum(v & 1 for v in vec) / pages


def test_set_cache_cold_and_warm(tmp_path: Path) -> None:
    data = tmp_path / "d" / "f.bin"
    data.parent.mkdir()
    data.write_bytes(b"\x01" * (16 * bench.MiB))
    assert bench.set_cache([tmp_path / "d"], "cold") == 16 * bench.MiB
    assert _resident_fraction(data) < 0.1
    assert bench.set_cache([tmp_path / "d"], "warm") == 16 * bench.MiB
    assert _resident_fraction(data) > 0.9


def test_small_program_is_not_billed_for_our_own_peak(tmp_path: Path) -> None:
    # Raise this process's VmHWM well above cat's: wait4's ru_maxrss for cat would report it (Linux carries the
    # pre-exec image's peak into the child), the harness must not.
    ballast = bytearray(150 * bench.MiB)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    src = tmp_path / "in"
    src.write_bytes(b"z" * (8 * bench.MiB))
    res = bench.run_pipeline([["sh", "-c", "cat; sleep 0.3"]], log_dir=tmp_path / "logs", stdin_path=src,
                             stdout_path=tmp_path / "out")
    del ballast
    assert res.ok
    assert res.procs[0].maxrss_sampled
    assert 0 < res.procs[0].maxrss < 20 * bench.MiB


@pytest.mark.slow
def test_whole_benchmark_on_a_tiny_dataset(tmp_path: Path) -> None:
    """The real flow end to end (server, sysbench, both tools, both directions), small enough for a test run."""
    import json

    doc = tmp_path / "B.md"
    rc = bench.main(["--size", "24M", "--runs", "1", "--kinds", "mariadb10", "--workdir", str(tmp_path / "w"),
                     "--load-time", "30", "--pairs", "1", "--doc", str(doc)])
    assert rc == 0
    results = json.loads(next((tmp_path / "w").glob("results-*.json")).read_text())
    kind = results["kinds"][0]
    assert kind["kind"] == "mariadb10"
    assert kind["dataset"]["tables"] == 4
    series = {(s["test"], s["tool"]): s for s in kind["series"]}
    for test in ("backup zstd-1", "extract zstd-1", "backup uncompressed", "extract uncompressed"):
        for tool in ("innostream", "mariadb-backup"):
            s = series[(test, tool)]
            assert s["ok"], (test, tool, s["returncodes"])
            assert s["wall"] > 0
            assert s["cpu"] > 0
            assert s["out_bytes"] > 1_000_000
    # Both tools extract the same amount of data from their own archives.
    assert series[("extract zstd-1", "innostream")]["out_bytes"] == pytest.approx(
        series[("extract zstd-1", "mariadb-backup")]["out_bytes"], rel=0.02)
    assert {r["test"] for r in kind["ratios"]} == {"backup zstd-1", "extract zstd-1", "backup uncompressed",
                                                   "extract uncompressed"}
    features = {(t, tool): s for (t, tool), s in series.items() if t.startswith("features ")}
    assert {tool for t, tool in features if t == bench.FEATURES_BACKUP} == {
        "innostream", "innostream --lock-ddl=full", f"innostream --throttle {bench.FEATURE_THROTTLE}",
        "innostream --no-fsync", "innostream encrypted", "mariadb-backup --parallel=2", "tar | zstd -1",
        "floor: read the datadir"}
    assert {tool for t, tool in features if t == bench.FEATURES_EXTRACT} == {
        "innostream", "innostream fsync", "innostream encrypted", "mariadb-backup --parallel=2",
        "zstd -d | tar -x"}
    for (t, tool), s in features.items():
        assert s["ok"], (t, tool, s["returncodes"])
    # the same data comes out whatever the row (backups of one idle server; the redo copied may differ a little)
    plain = features[(bench.FEATURES_EXTRACT, "innostream")]["out_bytes"]
    for tool in ("innostream fsync", "innostream encrypted", "mariadb-backup --parallel=2"):
        assert features[(bench.FEATURES_EXTRACT, tool)]["out_bytes"] == pytest.approx(plain, rel=0.02), tool
    assert any("encryption adds" in t["target"] for t in kind["targets"])
    paired = {(t, tool): s for (t, tool), s in series.items() if t.startswith("encryption ")}
    assert set(paired) == {(t, tool) for t in (bench.ENCRYPTION_BACKUP, bench.ENCRYPTION_EXTRACT)
                           for tool in ("innostream", "innostream encrypted")}
    assert all(s["ok"] for s in paired.values())
    assert any("paired runs" in t["measured"] for t in kind["targets"])
    assert kind["validation"]["pages"] > 0
    load = {r["tool"]: r for r in kind["load"]}
    assert load["innostream"]["ok"]
    assert load["innostream"]["scanned_lines"] >= 1
    assert load["innostream"]["samples"] >= 2
    assert "### mariadb10" in doc.read_text()
    assert load["innostream"]["raw"]["start"] is not None
    assert "catch_up" in load["innostream"]
    # Re-rendering from the results file recomputes the same lag figures.
    before = doc.read_text()
    assert bench.main(["--render", str(next((tmp_path / "w").glob("results-*.json"))), "--doc", str(doc)]) == 0
    assert doc.read_text() == before
    # Only logs are left behind by default.
    assert [p.name for p in (tmp_path / "w" / "runs" / "mariadb10").iterdir()] == ["logs"]


def test_codec_bench_writes_the_same_frames_sealed(tmp_path: Path) -> None:
    """tools/bench_codec times the real writer: the sealed archive has the plain one's frames plus a 16-byte tag
    each, and its report names the paired extra."""
    import io
    import subprocess

    from innostream.archive import crypt
    from innostream.archive.codec import ZstdCodec

    from tools import bench_codec

    data = (b"innodb page text " * 4000)[: 3 << 20] + bytes(range(256)) * 4096
    blobs = [("db/a.ibd", data), ("db/b.ibd", data[: 1 << 20])]
    _, _, plain = bench_codec.write_archive(blobs, ZstdCodec(1), 2, io.BytesIO())
    key = bytes(32)
    out = io.BytesIO()
    _, _, sealed = bench_codec.write_archive(blobs, crypt.new_codec(ZstdCodec(1), key), 2, out)
    assert bench_codec.read_archive(out.getvalue(), key, 2)[2] == len(out.getvalue())
    frames = 4 + 1  # a's four 1 MiB chunks, b's one
    assert sealed - plain >= 16 * frames
    (tmp_path / "db").mkdir()
    for name, blob in blobs:
        (tmp_path / name).write_bytes(blob)
    r = subprocess.run([PY, "-m", "tools.bench_codec", "--datadir", str(tmp_path), "--rounds", "2"],
                       capture_output=True, text=True, timeout=120, check=False, cwd=bench.REPO)
    assert r.returncode == 0, r.stderr
    assert "Write, paired over 2 rounds: AES-256-GCM adds" in r.stdout
    assert "Read, paired over 2 rounds: AES-256-GCM adds" in r.stdout
