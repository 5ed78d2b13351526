"""`scripts/bench --large`: read costs of one large experiment beside many small ones.

The data directory is built once and cached (scripts/bench_large_data.py). A first
daemon answers the first query of the large experiment while another client logs
metrics at a steady rate (the first pass and its ack p99); then a fresh daemon
answers each query once (cold) and again (warm, median of three). The page cache is
dropped before each daemon starts when we may (root). Each answer is checked against
plain Python and numpy reading the same files, whose times are the baselines.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_large_data as data
import yaml
from bench_figures import BY_KEY, CACHE_BYTES, Row
from bench_records import Paced
from bench_servers import KEY_HASH, MODE_OF, ROOT, Bench, Server, commit, daemon_config
from websockets.sync.client import ClientConnection, connect

from fetchml.protocol.metrics import decode_metrics_payload
from fetchml.protocol.requests import (
    GetExperiment,
    ListExperiments,
    QueryMetrics,
    Request,
    encode_request,
)
from fetchml.protocol.responses import Data, decode_response
from fetchml.server import indexer

NAME = "loss"
LTTB_POINTS = 1_000
WARM_REPEAT = 3
ACK_RATE = 500
"""LOG_METRIC messages per second from the other client during the first pass."""
ACK_WINDOW_S = 2.0
"""The other client logs in windows of this length until the first pass is over."""
ANY_ORDER_RECORDS = 10_000_000
"""Records of the file whose names come in random order (at most --large-records)."""


@dataclass(frozen=True)
class LargeSizes:
    large_records: int
    large_small: int
    drop_caches: bool

    @property
    def range_steps(self) -> int:
        return min(10_000, max(1, self.large_records // len(data.NAMES) // 10))

    @property
    def any_order_records(self) -> int:
        return min(self.large_records, ANY_ORDER_RECORDS)

    def names(self) -> dict[str, Any]:
        return {
            "large_records": self.large_records,
            "large_small": self.large_small,
            "lttb_points": LTTB_POINTS,
            "range_steps": self.range_steps,
            "any_order_records": self.any_order_records,
        }


def call(ws: ClientConnection, request: Request) -> tuple[Data, float]:
    """One request's DATA answer and its round trip in ms (RuntimeError otherwise)."""
    started = time.perf_counter()
    ws.send(encode_request(request))
    message = ws.recv()
    ms = (time.perf_counter() - started) * 1000
    response = decode_response(message) if isinstance(message, bytes) else message
    if not isinstance(response, Data):
        raise RuntimeError(f"{type(request).__name__} answered {response}")
    return response, ms


def start_daemon(b: Bench, name: str, base: Path) -> Server:
    home = b.tmp / name
    home.mkdir()
    raw = daemon_config(home, "write")
    raw["storage"].update(base_path=str(base), cache_bytes=CACHE_BYTES)
    config = home / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    argv = [sys.executable, "-m", "fetchml.server", "serve", "--config", str(config)]
    server = Server(name, argv, home / "daemon.log", is_daemon=True)
    b.servers.append(server)
    return server


def paced_load(b: Bench, server: Server) -> "subprocess.Popen[str]":
    """The other client: LOG_METRIC at ACK_RATE for ACK_WINDOW_S to a small experiment."""
    options = {"commits": commit(data.ACKS), "per_message": 1, "rate": ACK_RATE}
    argv = b.load_argv(MODE_OF[Paced], server, {**options, "seconds": ACK_WINDOW_S})
    return subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def paced_p99(b: Bench, server: Server, proc: "subprocess.Popen[str]") -> float | None:
    stdout, stderr = proc.communicate(timeout=600)
    result = b.load_result(Paced, server, proc.returncode, stdout, stderr)
    return result.latency_ms.p99 if result and result.latency_ms else None


def first_pass(b: Bench, base: Path, records: int) -> tuple[float, float | None, float | None]:
    """(records/s of the first query, the worst window's ack p99 meanwhile, the ack p99
    of one window after it). The first query asks for the latest value per name: little
    to send, every record to read. Then one LIST, so that the restarted daemon finds the
    listing this one saved."""
    server = start_daemon(b, "first", base)
    took: list[float] = []

    def first_query() -> None:
        with connect(server.url, compression=None, proxy=None, max_size=None) as ws:
            large = bytes.fromhex(commit(data.LARGE))
            took.append(call(ws, QueryMetrics(key_hash=KEY_HASH, commit_id=large, max_points=2))[1])

    query = threading.Thread(target=first_query)
    load = paced_load(b, server)
    time.sleep(ACK_WINDOW_S / 4)  # the other client is logging
    query.start()
    windows = [paced_p99(b, server, load)]
    while query.is_alive():
        windows.append(paced_p99(b, server, paced_load(b, server)))
    query.join()
    if not took:
        raise RuntimeError("the first query failed")
    idle = paced_p99(b, server, paced_load(b, server))
    with connect(server.url, compression=None, proxy=None, max_size=None) as ws:
        unsaved_ms = call(ws, ListExperiments(key_hash=KEY_HASH))[1]
    b.stop(server)  # with its saved listing, as a daemon that ran before a restart has
    b.notes.append(f"first LIST of a daemon with no saved listing: {unsaved_ms:,.0f} ms")
    b.notes.append(
        f"first pass: {took[0] / 1000:.2f} s; ack p99 per {ACK_WINDOW_S:g} s window "
        f"meanwhile: {', '.join('n/a' if w is None else f'{w:.1f}' for w in windows)} ms"
    )
    busy = [w for w in windows if w is not None]
    return records / (took[0] / 1000), max(busy) if busy else None, idle


def any_order_pass(b: Bench, sizes: LargeSizes, cache: Path) -> tuple[float, float]:
    """(records/s of building the sidecars of a file whose names come in random order, in
    this process as the daemon's worker thread does; records/s of the plain scan of it).
    The plain scan goes first: both read the file from the page cache."""
    path = data.any_order(sizes.any_order_records, cache)
    scan = data.scan(path, NAME)
    directory = b.tmp / "any-order"
    directory.mkdir()
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.perf_counter()
        checkpoint, _ = indexer.extend(directory, fd, None)
        took = time.perf_counter() - started
    finally:
        os.close(fd)
        shutil.rmtree(directory)
    if checkpoint.count != scan.count:
        b.errors.append(f"any order: {checkpoint.count} records indexed of {scan.count}")
    b.notes.append(
        f"first pass, names in random order: {scan.count:,} records in {took:.2f} s "
        f"(plain scan {scan.seconds:.2f} s)"
    )
    return scan.count / took, scan.count / scan.seconds


def drop_page_cache(b: Bench, sizes: LargeSizes) -> str:
    if sizes.drop_caches:
        try:
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            return "cold = fresh daemon, page cache dropped"
        except OSError as exc:
            b.notes.append(f"page cache not dropped: {exc}")
    return "cold = fresh daemon, warm page cache"


class Queries:
    """The timed questions, each answer checked against the baseline scan."""

    def __init__(self, b: Bench, ws: ClientConnection, sizes: LargeSizes) -> None:
        self.b, self.ws, self.sizes = b, ws, sizes
        self.large = bytes.fromhex(commit(data.LARGE))
        self.answers: dict[str, Any] = {}
        low = sizes.large_records // len(data.NAMES) // 2
        self.steps = (low, low + sizes.range_steps - 1)

    def list(self) -> float:
        response, ms = call(self.ws, ListExperiments(key_hash=KEY_HASH))
        rows = json.loads(response.payload)
        self.answers["list"] = [(r["commit_id"], r["metrics_count"]) for r in rows]
        return ms

    def get(self) -> float:
        response, ms = call(self.ws, GetExperiment(key_hash=KEY_HASH, commit_id=self.large))
        doc = json.loads(response.payload)
        latest = {m["name"]: (m["step"], m["value"]) for m in doc["metrics"]}
        self.answers["get"] = (doc["metrics_count"], latest)
        return ms

    def latest(self) -> float:
        request = QueryMetrics(key_hash=KEY_HASH, commit_id=self.large, max_points=2)
        response, ms = call(self.ws, request)
        records = decode_metrics_payload(response.payload).records
        self.answers["latest"] = {r.name: (r.step, r.value) for r in records}
        return ms

    def lttb(self) -> float:
        request = QueryMetrics(
            key_hash=KEY_HASH, commit_id=self.large, name=NAME, max_points=LTTB_POINTS
        )
        response, ms = call(self.ws, request)
        records = decode_metrics_payload(response.payload).records
        self.answers["lttb"] = [(r.step, r.value) for r in records]
        return ms

    def range(self) -> float:
        """Every `NAME` record in the step range, following `next` until 0."""
        low, high = self.steps
        after, count, ms = 0, 0, 0.0
        while True:
            request = QueryMetrics(
                key_hash=KEY_HASH,
                commit_id=self.large,
                name=NAME,
                step_from=low,
                step_to=high,
                after=after,
            )
            response, took = call(self.ws, request)
            page = decode_metrics_payload(response.payload)
            count, ms, after = count + len(page.records), ms + took, page.next
            if after == 0:
                break
        self.answers["range"] = count
        return ms

    def check(self, scan: data.Scan, experiments: int) -> None:
        errors = self.b.errors
        rows = self.answers["list"]
        large = (commit(data.LARGE), scan.count)
        if not rows or rows[0] != large or len(rows) > experiments:
            errors.append(f"LIST: {len(rows)} of {experiments} rows, the first {rows[:1]}")
        elif any(count != data.SMALL_RECORDS for c, count in rows[1:] if c != commit(data.ACKS)):
            errors.append("LIST: a small experiment's count is wrong")
        if len(rows) < experiments:
            self.b.notes.append(f"LIST: the {len(rows):,} newest experiments fit in one message")
        count, newest = self.answers["get"]
        if count != scan.count or any(scan.latest[n] != v for n, v in newest.items()):
            errors.append(f"GET_EXPERIMENT: count {count} of {scan.count} or latest values differ")
        if self.answers["latest"] != scan.latest:
            errors.append(f"latest per name {self.answers['latest']} differs from {scan.latest}")
        x, y = scan.points()
        expected = data.lttb(x, y, LTTB_POINTS)
        served = self.answers["lttb"]
        if len(served) != len(expected):
            errors.append(f"LTTB: {len(served)} points, expected {len(expected)}")
        elif served != expected:
            differ = sum(1 for s, e in zip(served, expected, strict=True) if s != e)
            self.b.notes.append(f"LTTB: {differ} of {len(expected)} points differ from numpy LTTB")
        if self.answers["range"] != data.in_range(x, *self.steps):
            errors.append(f"step range: {self.answers['range']} records")


def measure(b: Bench, base: Path, sizes: LargeSizes) -> tuple[dict[str, float], Queries, int, int]:
    """Cold then warm ms per query on a fresh daemon, and its RSS before and after."""
    server = start_daemon(b, "restarted", base)
    before = server.rss()
    times: dict[str, float] = {}
    with connect(server.url, compression=None, proxy=None, max_size=None) as ws:
        q = Queries(b, ws, sizes)
        queries = {
            "list": q.list,
            "get": q.get,
            "latest": q.latest,
            "lttb": q.lttb,
            "range": q.range,
        }
        for key, query in queries.items():
            times[f"{key}_cold"] = query()
        for key, query in queries.items():
            times[f"{key}_warm"] = statistics.median(query() for _ in range(WARM_REPEAT))
    after = server.rss()
    b.stop(server)
    return times, q, before, after


def run(b: Bench, sizes: LargeSizes, cache: Path) -> list[Row]:
    started = time.monotonic()
    base = data.build(sizes.large_records, sizes.large_small, cache)
    progress("data directory ready", started)
    drop_page_cache(b, sizes)  # the first pass reads from disk too
    rate, busy, idle = first_pass(b, base, sizes.large_records)
    progress("first pass", started)
    any_order = any_order_pass(b, sizes, cache)
    progress("first pass, names in random order", started)
    b.notes.append(drop_page_cache(b, sizes))
    times, queries, rss_before, rss_after = measure(b, base, sizes)
    progress("cold and warm queries", started)
    scan = data.scan(base / commit(data.LARGE) / "metrics.bin", NAME)
    x, y = scan.points()
    lttb_s = timed_s(lambda: data.lttb(x, y, LTTB_POINTS))
    range_s = timed_s(lambda: data.in_range(x, *queries.steps))
    experiments, list_s = data.list_small(base, scan)
    queries.check(scan, experiments)
    progress("baseline", started)
    b.notes.append(f"baseline scan: {scan.count:,} records in {scan.seconds:.2f} s")
    baselines = {
        "list": list_s,
        "get": scan.seconds,
        "latest": scan.seconds,
        "lttb": scan.seconds + lttb_s,
        "range": scan.seconds + range_s,
    }
    rows = [
        Row(BY_KEY["large_first_pass"], rate, scan.count / scan.seconds),
        Row(BY_KEY["large_first_pass_ack_p99"], busy, idle),
        Row(BY_KEY["large_first_pass_any_order"], *any_order),
    ]
    for key, baseline in baselines.items():
        for when in ("cold", "warm"):
            rows.append(Row(BY_KEY[f"large_{key}_{when}"], times[f"{key}_{when}"], baseline * 1000))
    rows.append(Row(BY_KEY["large_rss"], rss_after, rss_before))
    return rows


def timed_s(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def progress(step: str, started: float) -> None:
    print(f"[{time.monotonic() - started:5.1f} s] {step}", file=sys.stderr, flush=True)
