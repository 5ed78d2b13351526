"""scripts/bench: figures declared once, the README's table printed from results, and the
load generator's typed records read back as they were written."""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from fetchml.protocol.metrics import encode_record, iter_records, metrics_packet, scan
from tests.support.daemon import daemon_at
from tests.support.experiments import make_experiment
from tests.support.keys import ADMIN_KEY

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bench  # noqa: E402
import bench_cluster  # noqa: E402
import bench_large_data  # noqa: E402
import bench_watchers  # noqa: E402
from bench_figures import BY_KEY, FIGURES, LARGE_FIGURES, Row, markdown_table  # noqa: E402
from bench_records import (  # noqa: E402
    Claims,
    Idle,
    Paced,
    Pass,
    Percentiles,
    Pipeline,
    Reads,
    Report,
    Stream,
    Watch,
    Watchers,
    read_report,
)
from bench_servers import commit  # noqa: E402


def readme_table() -> list[str]:
    """The benchmark section's own table (the first one; others, beside peers, follow)."""
    lines = (ROOT / "README.md").read_text().split("## Benchmarks", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def run_table(tmp_path: Path, report: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bench-results.json"
    path.write_text(json.dumps(report))
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--table", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_readme_table_has_a_line_for_every_declared_figure() -> None:
    rows = [Row(f, None, None) for f in FIGURES]
    generated = markdown_table(rows, bench.name_values(bench.FULL)).splitlines()
    titles = [line.split(" | ")[0] for line in generated]
    assert [line.split(" | ")[0] for line in readme_table()] == titles


def test_figure_keys_are_unique() -> None:
    assert len(BY_KEY) == len(FIGURES) + len(LARGE_FIGURES)


def test_table_prints_the_readme_lines_from_a_results_file(tmp_path: Path) -> None:
    sizes = bench.name_values(bench.QUICK)
    rows = [
        {"figure": "single", "value": 800.0, "baseline": 1000.0},
        {"figure": "ack_p50_write", "value": 0.531, "baseline": 0.19},
        {"figure": "ack_p99_write", "value": 4.0, "baseline": 31.3},
        {"figure": "streams", "value": 779717.2, "baseline": 3190796.0},
        {"figure": "streams_fairness", "value": 0.891, "baseline": None},
        {"figure": "lttb", "value": None, "baseline": 3281.4},
        {"figure": "watched_ingest", "value": 45.0, "baseline": 100.0},
        {"figure": "watched_ingest_few", "value": 95.0, "baseline": 100.0},
        {"figure": "idle_workers", "value": 0.4567, "baseline": 0.05},
        {"figure": "cluster_push_p50", "value": 103.2, "baseline": 1.52},
        {"figure": "cluster_push_p99", "value": None, "baseline": 3.9},
        {"figure": "cluster_ingest", "value": 850.0, "baseline": 1000.0},
        {"figure": "cluster_shared", "value": 700.0, "baseline": 1000.0},
    ]
    done = run_table(tmp_path, {"sizes": sizes, "rows": rows})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "| figure | fetchml | baseline | ratio | target |",
        "|---|---|---|---|---|",
        "| LOG_METRIC, 1 metric/msg, pipelined (msg/s) | 800 | 1,000 (echo) | 0.80x"
        " | >= 0.9x: **miss** |",
        "| LOG_METRIC ack p50 / p99 at 10,000 metrics/s, write (ms) | 0.531 / 4 | 0.19 / 31.3"
        " (echo) | | p99 <= 5: pass |",
        "| 100 connections streaming (metrics/s; fairness min/max) | 779,717 / 0.89"
        " | 3,190,796 / n/a (echo) | 0.24x | |",
        "| LTTB 200,000 -> 1,000 points, median of 1 (ms) | n/a | 3,281 (py read+parse+LTTB)"
        " | n/a | <= 300: n/a |",
        "| ingest with 20 watchers vs without (metrics/s) | 45 | 100 (no watchers) | 0.45x"
        " | >= 0.5x: **miss** |",
        "| ingest with 10 watchers vs without (metrics/s) | 95 | 100 (no watchers) | 0.95x"
        " | >= 0.9x: pass |",
        "| daemon CPU with 100 idle workers claiming, 8 s after 0 s (%) | 0.46 | 0.05 (no workers) |"
        " | <= 1: pass |",
        "| cross-node WATCH push p50 / p99, 1,000 metrics/s in LOG_METRICS of 10 (ms)"
        " | 103 / n/a | 1.52 / 3.9 (same node) | | p99 <= 200: n/a |",
        "| 3 nodes ingesting, one experiment each, LOG_METRICS 1,000/msg (metrics/s) | 850"
        " | 1,000 (1 node, same load) | 0.85x | >= 0.9x: **miss** |",
        "| one experiment from 3 nodes at once, LOG_METRICS 1,000/msg (metrics/s) | 700"
        " | 1,000 (1 node, same load) | 0.70x | |",
    ]


def test_table_refuses_an_undeclared_figure(tmp_path: Path) -> None:
    rows = [{"figure": "no_such_figure", "value": 1.0, "baseline": 1.0}]
    done = run_table(tmp_path, {"sizes": bench.name_values(bench.QUICK), "rows": rows})
    assert done.returncode == 1
    assert done.stdout == ""
    assert "cannot make the table from" in done.stderr
    assert "no_such_figure" in done.stderr


def test_table_without_a_results_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--table", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot make the table from" in done.stderr
    assert "FileNotFoundError" in done.stderr


PERCENTILES = Percentiles(p50=0.5, p90=1.5, p99=2.5, max=9.0)
REPORTS = [
    Report("pipeline", Pipeline(1, [Stream(10, 9, 10, 0.5), Stream(4, 4, 4, 0.25)])),
    Report("paced", Paced(per_message=1, sent=3, ok=3, rate=10.0, latency_ms=PERCENTILES)),
    Report("paced", Paced(per_message=1, sent=0, ok=0, rate=0.0, latency_ms=None)),
    Report(
        "reads",
        Reads(
            first_pass=Pass(records=5, pages=1, seconds=0.5),
            second_pass=Pass(records=5, pages=1, seconds=0.0),
            latest_ms=1.0,
            latest_points=[("loss", 4, 0.25)],
            lttb_ms=2.0,
            lttb_points=[("loss", 0, 1.0), ("loss", 4, float("inf"))],
        ),
    ),
    Report(
        "watch",
        Watch(watchers=2, ok=3, ack_latency_ms=PERCENTILES, push_latency_ms=None, samples=0),
    ),
    Report(
        "watch",
        Watch(1, ok=3, ack_latency_ms=None, push_latency_ms=PERCENTILES, samples=3, silent=1),
    ),
    Report("watchers", Watchers(watchers=2, records=10, pushes=3, slow_closes=1)),
    Report("idle", None, ["connection not opened: OSError: refused (x3)"]),
    Report("claims", Claims(workers=100, claims=420)),
]


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: r.mode)
def test_load_reports_read_back_as_written(report: Report) -> None:
    assert read_report(report.to_json()) == report


def test_rates_of_a_pipeline() -> None:
    run = Pipeline(per_message=100, streams=[Stream(10, 10, 10, 0.5), Stream(4, 4, 4, 0.25)])
    assert (run.messages_per_second, run.metrics_per_second) == (28.0, 2800.0)
    assert run.fairness == 0.8  # 16 msg/s over 20 msg/s
    assert (run.acked(0), run.acked(1)) == (1000, 400)
    assert Pipeline(per_message=1, streams=[]).messages_per_second is None


def test_read_report_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown load mode 'bogus'"):
        read_report(json.dumps({"mode": "bogus", "result": None, "errors": []}))


def test_the_load_generator_prints_a_report() -> None:
    """bench_load.py's last line is a Report bench.py reads back (idle, no connections)."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_load.py"),
            "idle",
            "--url",
            "ws://127.0.0.1:9/ws",
            "--connections",
            "0",
        ],
        input="",
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "ready"
    assert read_report(done.stdout.splitlines()[-1]) == Report("idle", Idle(connections=0), [])


def load_until_ready(args: list[str], seconds: float) -> str:
    """bench_load.py with `args`, left running `seconds` after it prints "ready", then
    told to stop (stdin closed); what it printed after "ready" (it must exit 0)."""
    load = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench_load.py"), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert load.stdout is not None
    assert load.stdout.readline().strip() == "ready"
    time.sleep(seconds)
    stdout, stderr = load.communicate(timeout=60)
    assert load.returncode == 0, stderr
    return stdout


def test_claim_loops_back_off_like_the_worker(tmp_path: Path) -> None:
    """bench_load.py's `claims` mode against a real daemon: every loop claims once before
    "ready", then waits the worker's first backoff (0.75-1 s) before its second claim and
    1.5-2 s more before its third, so 1.9 s after "ready" each loop claimed exactly once
    more, and every answer was "no job"."""
    server = daemon_at(tmp_path)
    server.start()
    try:
        stdout = load_until_ready(
            ["claims", "--url", server.url, "--key", ADMIN_KEY, "--workers", "5"], 1.9
        )
    finally:
        server.close()
    assert read_report(stdout.splitlines()[-1]) == Report("claims", Claims(5, 5), [])


def test_the_watchers_load_receives_every_push_and_refuses_a_gap(tmp_path: Path) -> None:
    """bench_load.py's `watchers` against a real daemon: each watcher gets every record
    of the experiment (its pushes' heads checked, their bytes received); and a push
    whose count does not follow the last `next` is refused."""
    records = b"".join(encode_record(1764000000, i, float(i), b"loss") for i in range(3000))
    server = daemon_at(tmp_path)
    make_experiment(server.data, commit("watched"), records)
    server.start()
    try:
        stdout = load_until_ready(
            [
                *("watchers", "--url", server.url, "--key", ADMIN_KEY),
                *("--commits", commit("watched"), "--watchers", "3", "--from-index", "1000"),
            ],
            1.0,
        )
    finally:
        server.close()
    report = read_report(stdout.splitlines()[-1])
    assert report.errors == [] and isinstance(report.result, Watchers), report
    assert (report.result.records, report.result.slow_closes) == (3 * 2000, 0)

    watcher = bench_watchers.Watcher("ws://127.0.0.1:9/ws", bytes(16), bytes(20), 10)
    three = records[: 3 * len(records) // 3000]
    for next_index in (13, 16, 20):
        frame = Frame(Opcode.BINARY, metrics_packet(0, next_index, 3, three)).serialize(mask=False)
        watcher.buf[: len(frame)] = frame
        watcher.start, watcher.end = 0, len(frame)
        if next_index == 20:
            with pytest.raises(ValueError, match="3 records from 16 to 20"):
                watcher._frame()
        else:
            assert watcher._frame() and not watcher._frame()
    assert (watcher.next, watcher.records, watcher.pushes) == (16, 6, 2)


# -- cluster figures ------------------------------------------------------------------------


def test_cluster_figures_need_redis_server(tmp_path: Path) -> None:
    """Without redis-server on PATH, --cluster (and the full run) stop at once, saying why."""
    for argv in (["--cluster"], []):
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "bench.py"), *argv, "--dir", str(tmp_path)],
            env={"PATH": str(tmp_path), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "need Debian's redis-server: apt-get install redis-server" in done.stderr
        assert list(tmp_path.iterdir()) == []


def load(*argv: str) -> Report:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_load.py"), *argv, "--key", ADMIN_KEY],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return read_report(done.stdout.splitlines()[-1])


def test_load_generator_spreads_connections_and_times_out_a_watcher_of_another_daemon(
    tmp_path: Path,
) -> None:
    """pipeline sends connection i to the i-th URL; watch writes on --writer-url, and its
    watcher on a daemon that never sees those records is reported silent after
    --push-timeout, neither waited for nor an error."""
    one, two = commit("spread-0"), commit("spread-1")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    servers = [daemon_at(tmp_path / name) for name in ("a", "b")]
    for server in servers:
        for cid in (one, two):
            make_experiment(server.data, cid, b"")
        server.spawn()
    try:
        for server in servers:
            server.ready()
        urls = ",".join(server.url for server in servers)
        spread = load(
            *("pipeline", "--url", urls, "--commits", f"{one},{two}"),
            *("--per-message", "10", "--messages", "3", "--window", "3"),
        )
        watch = load(
            *("watch", "--url", servers[1].url, "--writer-url", servers[0].url),
            *("--commits", one, "--per-message", "10", "--rate", "20", "--seconds", "0.2"),
            *("--watchers", "1", "--push-timeout", "0.3"),
        )
    finally:
        for server in servers:
            server.close()
    assert spread.errors == [] and isinstance(spread.result, Pipeline)
    assert [s.ok for s in spread.result.streams] == [3, 3]
    held = {
        (name, cid): len(iter_records((server.data / cid / "metrics.bin").read_bytes()))
        for name, server in zip("ab", servers, strict=True)
        for cid in (one, two)
    }
    assert held == {("a", one): 30 + 40, ("a", two): 0, ("b", one): 0, ("b", two): 30}
    assert watch.errors == [] and isinstance(watch.result, Watch)
    assert (watch.result.ok, watch.result.silent, watch.result.samples) == (4, 1, 0)
    assert watch.result.push_latency_ms is None


def test_cluster_check_counts_the_file_and_what_follows_its_records(tmp_path: Path) -> None:
    path = tmp_path / "metrics.bin"
    records = b"".join(encode_record(1764000000, i, 0.5, b"loss") for i in range(3))
    path.write_bytes(records)
    assert bench_cluster.file_problems(path, 3) == []
    assert bench_cluster.file_problems(path, 4) == [f"{path}: 3 records, 4 were acknowledged"]
    path.write_bytes(records + records[:7])
    assert bench_cluster.file_problems(path, 3) == [f"{path}: 7 bytes after the last valid record"]
    assert bench_cluster.file_problems(tmp_path / "none", 0) == []


# -- --large ---------------------------------------------------------------------------------


def test_large_mode_at_a_tiny_size(tmp_path: Path) -> None:
    """Every --large figure measured and its answers equal to the plain scan's."""
    results = tmp_path / "large.json"
    argv = [
        *("--large", "--large-records", "2003", "--large-small", "20"),
        *("--large-cache", str(tmp_path / "cache")),
        *("--keep-page-cache", "--json", str(results), "--dir", str(tmp_path)),
    ]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(results.read_text())
    assert (report["mode"], report["errors"]) == ("large", [])
    assert [r["figure"] for r in report["rows"]] == [f.key for f in LARGE_FIGURES]
    assert all(r["value"] is not None and r["baseline"] is not None for r in report["rows"])
    assert "cold = fresh daemon, warm page cache" in report["notes"]
    assert "2,003 records beside 20 small" in done.stdout


def test_large_mode_refuses_too_few_records() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--large", "--large-records", "9"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--large-records must be at least 10 (one per name)" in done.stderr


def test_large_data_is_valid_and_the_plain_scan_reads_it_exactly(tmp_path: Path) -> None:
    path = tmp_path / "metrics.bin"
    bench_large_data.write_large(path, 20_007)
    data = path.read_bytes()
    assert scan(data) == (len(data), 20_007, True)  # a valid prefix, whole
    records = [r for _, r in iter_records(data)]
    assert [r.name for r in records[:11]] == [*bench_large_data.NAMES, "loss"]
    plain = bench_large_data.scan(path, "loss")
    assert plain.count == 20_007
    assert plain.latest == {r.name: (r.step, r.value) for r in records}
    steps, values = plain.points()
    loss = [(r.step, r.value) for r in records if r.name == "loss"]
    assert list(zip(steps.tolist(), values.tolist(), strict=True)) == loss
    assert bench_large_data.lttb(steps, values, 100) == bench.plain_lttb(loss, 100)
    assert bench_large_data.in_range(steps, 10, 19) == 10


def test_large_data_in_any_order_holds_each_step_once_per_name_in_no_fixed_cycle(
    tmp_path: Path,
) -> None:
    path = tmp_path / "metrics.bin"
    bench_large_data.write_any_order(path, 20_007)
    data = path.read_bytes()
    assert scan(data) == (len(data), 20_007, True)
    records = [r for _, r in iter_records(data)]
    steps = [sorted(r.name for r in records[i : i + 10]) for i in range(0, 20_000, 10)]
    assert steps == [sorted(bench_large_data.NAMES)] * 2_000
    assert [r.step for r in records] == [i // 10 for i in range(20_007)]
    assert [r.name for r in records[:10]] != [r.name for r in records[10:20]]
    plain = bench_large_data.scan(path, "loss")
    assert plain.latest == {r.name: (r.step, r.value) for r in records}


def test_large_data_is_cached_and_rebuilt_when_half_built(tmp_path: Path) -> None:
    base = bench_large_data.build(30, 3, tmp_path)
    large = base / commit(bench_large_data.LARGE)
    assert sorted(p.name for p in base.iterdir()) == sorted(
        [large.name, commit("acks"), *(commit(f"small-{i}") for i in range(3))]
    )
    (large / "index").mkdir()  # what a daemon may leave: removed before each run
    (large / "index" / "names").write_bytes(b"x")
    (large / "run.json").write_text("{}")
    (base / ".fetchml-server.lock").write_bytes(b"")  # and the daemon's files beside them
    (base / ".fetchml-listing").write_text("{}")
    inode = (large / "metrics.bin").stat().st_ino
    assert bench_large_data.build(30, 3, tmp_path) == base
    assert sorted(p.name for p in large.iterdir()) == ["files", "meta.bin", "metrics.bin"]
    assert not [p for p in base.iterdir() if p.name.startswith(".")]
    assert (large / "metrics.bin").stat().st_ino == inode  # reused
    for broken in ("cut short", "another format"):
        (large / "metrics.bin").write_bytes(b"")
        marker = base.parent / "complete"
        if broken == "cut short":
            marker.unlink()
        else:
            marker.write_text(json.dumps({"format": bench_large_data.FORMAT + 1}))
        bench_large_data.build(30, 3, tmp_path)
        assert bench_large_data.scan(large / "metrics.bin", "loss").count == 30, broken


def test_the_logger_and_blocking_figures_print_with_their_targets(tmp_path: Path) -> None:
    rows = [
        {"figure": "logger_e2e", "value": 750.0, "baseline": 1000.0},
        {"figure": "logger_log", "value": 0.4234, "baseline": 0.19},
        {"figure": "logger_sync", "value": 700.0, "baseline": 1000.0},
        {"figure": "sync", "value": 790.0, "baseline": 1000.0},
    ]
    done = run_table(tmp_path, {"sizes": bench.name_values(bench.QUICK), "rows": rows})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2:] == [
        "| MetricLogger end to end, 200,000 points + close(), median of 1 (points/s) | 750"
        " | 1,000 (LOG_METRICS 1,000/msg, same points) | 0.75x | >= 0.75x: pass |",
        "| MetricLogger.log() median per call (us) | 0.423 | 0.19 (list.append) | 2.23x"
        " | <= 0.5: pass |",
        "| MetricLogger.log() + flush() one at a time, 500 calls (calls/s) | 700"
        " | 1,000 (websockets sync send+recv, echo) | 0.70x | >= 0.8x: **miss** |",
        "| LOG_METRIC one blocking call at a time, SyncClient.log_metric, 2,000 calls (calls/s)"
        " | 790 | 1,000 (bare websockets sync send()+recv()) | 0.79x | >= 0.8x: **miss** |",
    ]
