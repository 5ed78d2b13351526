"""The benchmark's load generator, run by scripts/bench.py in its own process.

Every mode drives one server URL (the daemon or the baseline echo server, the
same way for both; pipeline and watch also drive a cluster's nodes) and prints a
bench_records.Report as JSON on the last line of stdout: the mode's typed result,
and what went wrong in its "errors" list: ERROR responses, closed or refused
connections, missing answers. Modes:

  pipeline  LOG_METRIC(S) frames (LOG_METRICS_AT with --at), pre-encoded, pipelined
            (a window in flight) on one or more connections, for a number of
            messages or of seconds; with several URLs (comma-separated), connection
            i goes to the i-th, round-robin
  paced     frames at a fixed rate on one connection: request-to-ack latency
  reads     QUERY_METRICS: paging a whole experiment, latest per name, LTTB
  watch     watchers plus a paced writer in this process: push latency (the writer on
            --writer-url when given: another node's); a watcher with no push within
            --push-timeout seconds of the last write counts as silent, not an error
  watchers  watchers that only receive, until stdin closes (prints "ready" first); lean
            readers that parse only frame and push heads (bench_watchers.py)
  idle      idle connections, held until stdin closes (prints "ready" first)
  claims    idle workers: claim loops with the worker's backoff, one connection each,
            until stdin closes (prints "ready" after every loop's first claim)

Times come from time.perf_counter(), within this process only.
"""

import argparse
import asyncio
import collections
import math
import resource
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import bench_watchers
from bench_records import (
    Claims,
    Idle,
    Paced,
    Pass,
    Percentiles,
    Pipeline,
    Reads,
    Report,
    Result,
    Stream,
    Watch,
    Watchers,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from fetchml.protocol.enums import PacketType
from fetchml.protocol.metrics import decode_records, encode_record
from fetchml.protocol.requests import (
    ClaimJob,
    LogMetric,
    LogMetrics,
    LogMetricsAt,
    MetricPoint,
    QueryMetrics,
    Request,
    WatchMetrics,
    encode_request,
)
from fetchml.protocol.responses import Data, Error, decode_response
from fetchml.worker.agent import IDLE_S, MAX_IDLE_S
from fetchml.worker.link import backoff

NAMES = ["loss", "accuracy", "learning_rate", "grad_norm", "val_loss"]
MAX_RESPONSE_BYTES = 4 << 20
PAGE_HEAD = struct.Struct(">QI")
"""A DATA `metrics` payload starts with [next:u64][count:u32]."""
CONNECT_AT_ONCE = 64
"""Handshakes in progress at a time when opening many connections."""
DRAIN_TIMEOUT_S = 60.0

Errors = collections.Counter[str]


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def open_ws(url: str, key: str = "") -> connect:
    """A client connection with the daemon's transport settings (no compression); with a
    raw key in the handshake (X-API-Key) when given."""
    return connect(
        url,
        additional_headers={"X-API-Key": key} if key else None,
        compression=None,
        max_size=MAX_RESPONSE_BYTES,
        ping_interval=None,
        proxy=None,
        open_timeout=30,
    )


def key_hash(raw_key: str) -> bytes:
    return sha256(raw_key.encode()).digest()[:16]


def percentiles(seconds: list[float]) -> Percentiles | None:
    """p50, p90, p99 and max, in milliseconds (nearest rank); None without samples."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return Percentiles(
        p50=nearest_rank(ordered, 0.50) * 1000,
        p90=nearest_rank(ordered, 0.90) * 1000,
        p99=nearest_rank(ordered, 0.99) * 1000,
        max=ordered[-1] * 1000,
    )


def nearest_rank(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- frames and answers --------------------------------------------------------


def metric_frames(key: bytes, commit: bytes, per_message: int, count: int) -> list[bytes]:
    """`count` distinct encoded frames: LOG_METRIC when per_message is 1, else LOG_METRICS."""
    frames = []
    for i in range(count):
        if per_message == 1:
            request: Request = LogMetric(
                key_hash=key, commit_id=commit, step=i, value=i * 0.001, name=NAMES[i % 5]
            )
        else:
            points = tuple(
                MetricPoint(i, (i * per_message + j) * 0.001, NAMES[j % 5])
                for j in range(per_message)
            )
            request = LogMetrics(key_hash=key, commit_id=commit, metrics=points)
        frames.append(encode_request(request))
    return frames


def metric_frames_at(key: bytes, commit: bytes, per_message: int, count: int) -> list[bytes]:
    """`count` distinct LOG_METRICS_AT frames holding the points of metric_frames, each
    record stamped with a time of the last minute."""
    now = int(time.time()) - 60
    frames = []
    for i in range(count):
        records = b"".join(
            encode_record(now - j % 60, i, (i * per_message + j) * 0.001, NAMES[j % 5].encode())
            for j in range(per_message)
        )
        request = LogMetricsAt(key_hash=key, commit_id=commit, count=per_message, records=records)
        frames.append(encode_request(request))
    return frames


def describe(message: bytes | str) -> str:
    """An unexpected answer, as text for the errors list."""
    if isinstance(message, str):
        return "text message from the server"
    try:
        response = decode_response(message)
    except Exception as exc:
        return f"undecodable response: {exc}"
    if isinstance(response, Error):
        return f"ERROR {response.code.name}: {response.message} {response.details}".rstrip()
    return f"unexpected {type(response).__name__} response"


def is_success(message: bytes | str, errors: Errors) -> bool:
    if isinstance(message, bytes) and message[:1] == bytes((PacketType.SUCCESS,)):
        return True
    errors[describe(message)] += 1
    return False


def closed_text(exc: ConnectionClosed) -> str:
    return f"connection closed: {exc}"


def exception_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- pipeline: throughput ------------------------------------------------------


async def pipeline(
    ws: ClientConnection,
    frames: list[bytes],
    messages: int,
    deadline: float,
    window: int,
    errors: Errors,
) -> Stream:
    """Send frames round-robin with at most `window` unanswered, until `messages`
    are sent or `deadline` (perf_counter) passes; then wait for every answer."""
    stream = Stream()
    slots = asyncio.Semaphore(window)
    started = time.perf_counter()

    async def receive() -> None:
        try:
            async for message in ws:
                stream.answered += 1
                stream.seconds = time.perf_counter() - started
                stream.ok += is_success(message, errors)
                slots.release()
        except ConnectionClosed as exc:
            errors[closed_text(exc)] += 1
        finally:
            for _ in range(window):  # the connection is gone: do not leave the sender waiting
                slots.release()

    receiver = asyncio.create_task(receive())
    try:
        while stream.sent < messages and time.perf_counter() < deadline:
            await slots.acquire()
            await ws.send(frames[stream.sent % len(frames)])
            stream.sent += 1
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            for _ in range(window):  # all slots back: every request answered
                await slots.acquire()
    except ConnectionClosed as exc:
        errors[closed_text(exc)] += 1
    finally:
        receiver.cancel()
    if stream.answered != stream.sent:
        errors[f"{stream.sent - stream.answered} requests got no answer"] += 1
    return stream


async def run_pipeline(args: argparse.Namespace, errors: Errors) -> Pipeline:
    """One connection per commit, all started together."""
    key = key_hash(args.key)
    commits = [bytes.fromhex(c) for c in args.commits.split(",")]
    distinct = min(args.messages, args.distinct_frames)
    make = metric_frames_at if args.at else metric_frames
    frames = [make(key, c, args.per_message, distinct) for c in commits]
    urls = args.url.split(",")
    connections = [await open_ws(urls[i % len(urls)]) for i in range(len(commits))]
    try:
        deadline = time.perf_counter() + args.seconds if args.seconds else math.inf
        streams = await asyncio.gather(
            *(
                pipeline(ws, f, args.messages, deadline, args.window, errors)
                for ws, f in zip(connections, frames, strict=True)
            )
        )
    finally:
        await asyncio.gather(*(ws.close() for ws in connections))
    return Pipeline(per_message=args.per_message, streams=list(streams))


# -- paced: latency --------------------------------------------------------------


@dataclass
class PacedRun:
    """A paced run: send and answer times, in request order."""

    sends: list[float] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)
    ok: int = 0
    """Requests answered with SUCCESS."""


async def paced(
    ws: ClientConnection, frames: list[bytes], rate: float, count: int, errors: Errors
) -> PacedRun:
    """Send `count` frames at `rate` per second, timing each request and its answer."""
    run = PacedRun()
    sends, answers = run.sends, run.answers

    async def receive() -> None:
        while len(answers) < count:
            message = await ws.recv()
            answers.append(time.perf_counter())
            run.ok += is_success(message, errors)

    receiver = asyncio.create_task(receive())
    started = time.perf_counter()
    try:
        for i in range(count):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(time.perf_counter())
            await ws.send(frames[i % len(frames)])
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            await receiver
    except ConnectionClosed as exc:
        errors[closed_text(exc)] += 1
    finally:
        receiver.cancel()
    if len(answers) != count:
        errors[f"{count - len(answers)} requests got no answer"] += 1
    return run


async def run_paced(args: argparse.Namespace, errors: Errors) -> Paced:
    key = key_hash(args.key)
    count = max(1, round(args.rate * args.seconds))
    frames = metric_frames(key, bytes.fromhex(args.commits), args.per_message, min(count, 100))
    async with open_ws(args.url) as ws:
        run = await paced(ws, frames, args.rate, count, errors)
    sends = run.sends
    return Paced(
        per_message=args.per_message,
        sent=len(sends),
        ok=run.ok,
        rate=(len(sends) - 1) / (sends[-1] - sends[0]) if len(sends) > 1 else 0.0,
        latency_ms=percentiles(latencies(run)),
    )


def latencies(run: PacedRun) -> list[float]:
    return [a - s for s, a in zip(run.sends, run.answers, strict=False)]


# -- reads -------------------------------------------------------------------------


async def query(ws: ClientConnection, request: QueryMetrics, errors: Errors) -> bytes | None:
    """One QUERY_METRICS: the DATA payload, or None (and an error) when refused."""
    await ws.send(encode_request(request))
    message = await ws.recv()
    response = decode_response(message) if isinstance(message, bytes) else None
    if isinstance(response, Data) and response.data_type == "metrics":
        return response.payload
    errors[describe(message)] += 1
    return None


async def page_through(ws: ClientConnection, key: bytes, commit: bytes, errors: Errors) -> Pass:
    """Every record, a server-default page at a time, following `next` until 0.
    Counts records from each page's header (decoding them is the client's work)."""
    records = pages = after = 0
    started = time.perf_counter()
    while True:
        payload = await query(ws, QueryMetrics(key_hash=key, commit_id=commit, after=after), errors)
        if payload is None:
            break
        after, count = PAGE_HEAD.unpack_from(payload)
        records += count
        pages += 1
        if after == 0:
            break
    return Pass(records=records, pages=pages, seconds=time.perf_counter() - started)


async def timed_points(
    ws: ClientConnection, request: QueryMetrics, errors: Errors
) -> tuple[float, list[tuple[str, int, float]]]:
    """(seconds, [[name, step, value]...]) of one downsampling query."""
    started = time.perf_counter()
    payload = await query(ws, request, errors)
    seconds = time.perf_counter() - started
    if payload is None:
        return seconds, []
    records = decode_records(payload[PAGE_HEAD.size :])
    return seconds, [(r.name, r.step, r.value) for r in records]


async def run_reads(args: argparse.Namespace, errors: Errors) -> Reads:
    key = key_hash(args.key)
    many, one = bytes.fromhex(args.many), bytes.fromhex(args.one)
    latest = QueryMetrics(key_hash=key, commit_id=many, max_points=2)
    lttb = QueryMetrics(key_hash=key, commit_id=one, name=args.name, max_points=args.points)
    async with open_ws(args.url) as ws:
        first_pass = await page_through(ws, key, many, errors)
        second_pass = await page_through(ws, key, many, errors)
        latest_s, latest_points = await timed_points(ws, latest, errors)
        await timed_points(ws, lttb, errors)  # first read of that file: the daemon indexes it
        lttb_runs = [await timed_points(ws, lttb, errors) for _ in range(args.repeat)]
    return Reads(
        first_pass=first_pass,
        second_pass=second_pass,
        latest_ms=latest_s * 1000,
        latest_points=latest_points,
        lttb_ms=sorted(s * 1000 for s, _ in lttb_runs)[len(lttb_runs) // 2],
        lttb_points=lttb_runs[-1][1],
    )


# -- watch: push latency -------------------------------------------------------


async def start_watch(url: str, key: bytes, commit: bytes, from_index: int) -> ClientConnection:
    """A connection whose WATCH_METRICS was accepted (ConnectionError otherwise)."""
    ws = await open_ws(url)
    await ws.send(
        encode_request(WatchMetrics(key_hash=key, commit_id=commit, from_index=from_index))
    )
    answer = await ws.recv()
    if not (isinstance(answer, bytes) and answer[:1] == bytes((PacketType.SUCCESS,))):
        await ws.close()
        raise ConnectionError(f"WATCH_METRICS refused: {describe(answer)}")
    return ws


def push_page(message: bytes | str) -> tuple[int, int]:
    """(next, count) of a DATA `metrics` push."""
    response = decode_response(message) if isinstance(message, bytes) else None
    if not isinstance(response, Data) or response.data_type != "metrics":
        raise ValueError(describe(message))
    next_index, count = PAGE_HEAD.unpack_from(response.payload)
    return next_index, count


async def open_many(opener: Callable[[], Awaitable[Any]], count: int) -> list[Any]:
    """`count` results of opener(), CONNECT_AT_ONCE at a time; exceptions are returned."""
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def one() -> Any:
        async with gate:
            return await opener()

    return await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


@dataclass
class Receipts:
    """What one watcher got: (perf_counter, next) per push, and records in total."""

    pushes: list[tuple[float, int]] = field(default_factory=list)
    records: int = 0


async def receive_pushes(ws: ClientConnection, receipts: Receipts, errors: Errors) -> None:
    try:
        async for message in ws:
            now = time.perf_counter()
            next_index, count = push_page(message)
            receipts.pushes.append((now, next_index))
            receipts.records += count
    except ConnectionClosed as exc:
        errors[f"watcher {closed_text(exc)}"] += 1
    except ValueError as exc:
        errors[f"watcher got {exc}"] += 1


def push_latencies(receipts: Receipts, sends: list[float], ends: list[int]) -> list[float]:
    """Per written message: from its send to the first push reaching past its records
    (a push may arrive before the writer's ack: the daemon writes it at commit)."""
    out = []
    pushes = receipts.pushes
    j = 0
    for sent, end in zip(sends, ends, strict=False):
        while j < len(pushes) and pushes[j][1] < end:
            j += 1
        if j == len(pushes):
            break
        out.append(pushes[j][0] - sent)
    return out


async def wait_caught_up(receipts: list[Receipts], end: int, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(r.pushes and r.pushes[-1][1] >= end for r in receipts):
            return
        await asyncio.sleep(0.01)


async def run_watch(args: argparse.Namespace, errors: Errors) -> Watch:
    key, commit = key_hash(args.key), bytes.fromhex(args.commits)
    opened = await open_many(
        lambda: start_watch(args.url, key, commit, args.from_index), args.watchers
    )
    watchers = [ws for ws in opened if isinstance(ws, ClientConnection)]
    for failure in (f for f in opened if not isinstance(f, ClientConnection)):
        errors[f"watcher not opened: {exception_text(failure)}"] += 1
    receipts = [Receipts() for _ in watchers]
    tasks = [
        asyncio.create_task(receive_pushes(ws, r, errors))
        for ws, r in zip(watchers, receipts, strict=True)
    ]
    count = max(1, round(args.rate * args.seconds))
    frames = metric_frames(key, commit, args.per_message, min(count, 100))
    async with open_ws(args.writer_url or args.url) as writer:
        run = await paced(writer, frames, args.rate, count, errors)
    acks = run.answers
    ends = [args.from_index + (i + 1) * args.per_message for i in range(len(acks))]
    end = ends[-1] if ends else args.from_index
    await wait_caught_up(receipts, end, timeout=args.push_timeout)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in watchers))
    expected = run.ok * args.per_message
    silent = sum(1 for r in receipts if not r.pushes) if expected else 0
    wrong = [r.records for r in receipts if r.pushes and r.records != expected]
    if wrong:
        errors[f"{len(wrong)} watchers got other than {expected} records, e.g. {wrong[0]}"] += 1
    pushes = [x for r in receipts for x in push_latencies(r, run.sends[: len(acks)], ends)]
    return Watch(
        watchers=len(watchers),
        ok=run.ok,
        ack_latency_ms=percentiles(latencies(run)),
        push_latency_ms=percentiles(pushes),
        samples=len(pushes),
        silent=silent,
    )


# -- watchers: followers under max-speed ingest (bench_watchers) ---------------------


async def run_watchers(args: argparse.Namespace, errors: Errors) -> Watchers:
    key, commit = key_hash(args.key), bytes.fromhex(args.commits)
    result, failures = bench_watchers.run_watchers(
        args.url, key, commit, args.watchers, args.from_index
    )
    for text in failures:
        errors[f"watcher failed: {text}"] += 1
    return result


# -- idle: memory per connection --------------------------------------------------------


async def run_idle(args: argparse.Namespace, errors: Errors) -> Idle:
    # With the key in the handshake: idle connections without one are capped per address
    # (server.max_connections_per_ip) and closed after server.auth_timeout_s.
    opened = await open_many(lambda: open_ws(args.url, args.key), args.connections)
    connections = [ws for ws in opened if isinstance(ws, ClientConnection)]
    for failure in (f for f in opened if not isinstance(f, ClientConnection)):
        errors[f"connection not opened: {exception_text(failure)}"] += 1
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the bench closes our stdin when done
    await asyncio.gather(*(ws.close() for ws in connections))
    return Idle(connections=len(connections))


# -- claims: idle workers --------------------------------------------------------------


def is_empty_claim(message: bytes | str, errors: Errors) -> bool:
    """A DATA `job` answer with no job."""
    if isinstance(message, bytes):
        response = decode_response(message)
        if isinstance(response, Data) and response.data_type == "job":
            if response.payload == b"null":
                return True
            errors["a claim got a job"] += 1
            return False
    errors[describe(message)] += 1
    return False


async def run_claims(args: argparse.Namespace, errors: Errors) -> Claims:
    """Each connection claims as one worker slot: CLAIM_JOB, and while the queue is empty
    the worker's own backoff (1 s doubling to 10 s, with jitter) before the next."""
    key = key_hash(args.key)
    opened = await open_many(lambda: open_ws(args.url, args.key), args.workers)
    connections = [ws for ws in opened if isinstance(ws, ClientConnection)]
    for failure in (f for f in opened if not isinstance(f, ClientConnection)):
        errors[f"connection not opened: {exception_text(failure)}"] += 1
    frames = [
        encode_request(ClaimJob(key_hash=key, worker_id=f"idle-{i}"))
        for i in range(len(connections))
    ]
    claims = 0

    async def claim(ws: ClientConnection, frame: bytes) -> bool:
        await ws.send(frame)
        return is_empty_claim(await ws.recv(), errors)

    async def claim_loop(ws: ClientConnection, frame: bytes) -> None:
        nonlocal claims
        idle = 1  # the first claim is done
        try:
            while True:
                await asyncio.sleep(backoff(idle, IDLE_S, MAX_IDLE_S))
                empty = await claim(ws, frame)
                claims += empty
                idle += 1
        except ConnectionClosed as exc:
            errors[closed_text(exc)] += 1

    await asyncio.gather(*(claim(ws, frame) for ws, frame in zip(connections, frames, strict=True)))
    loops = [
        asyncio.create_task(claim_loop(ws, f)) for ws, f in zip(connections, frames, strict=True)
    ]
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the bench closes our stdin when done
    for task in loops:
        task.cancel()
    await asyncio.gather(*loops, return_exceptions=True)
    await asyncio.gather(*(ws.close() for ws in connections))
    return Claims(workers=len(connections), claims=claims)


# -- main ------------------------------------------------------------------------------------

MODES: dict[str, Callable[[argparse.Namespace, Errors], Coroutine[Any, Any, Result]]] = {
    "pipeline": run_pipeline,
    "paced": run_paced,
    "reads": run_reads,
    "watch": run_watch,
    "watchers": run_watchers,
    "idle": run_idle,
    "claims": run_claims,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--url", required=True, help="comma-separated for pipeline")
    parser.add_argument("--key", default="", help="raw API key")
    parser.add_argument("--commits", default="", help="commit hex, comma-separated for pipeline")
    parser.add_argument("--per-message", type=int, default=1, help="metrics per frame")
    parser.add_argument("--messages", type=int, default=sys.maxsize, help="pipeline: frames")
    parser.add_argument("--seconds", type=float, default=0.0, help="pipeline, paced, watch")
    parser.add_argument("--window", type=int, default=1000, help="pipeline: unanswered at most")
    parser.add_argument("--distinct-frames", type=int, default=100, help="sent round-robin")
    parser.add_argument("--at", type=int, default=0, help="pipeline: 1 sends LOG_METRICS_AT")
    parser.add_argument("--rate", type=float, default=10_000, help="paced, watch: frames/s")
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--writer-url", default="", help="watch: the writer's (default --url)")
    parser.add_argument(
        "--push-timeout", type=float, default=30.0, help="watch: s after the last write"
    )
    parser.add_argument("--from-index", type=int, default=0)
    parser.add_argument("--connections", type=int, default=1000, help="idle")
    parser.add_argument("--workers", type=int, default=100, help="claims: claim loops")
    parser.add_argument("--many", default="", help="reads: commit hex with many names")
    parser.add_argument("--one", default="", help="reads: commit hex with one long series")
    parser.add_argument("--name", default="loss", help="reads: the long series' name")
    parser.add_argument("--points", type=int, default=1000, help="reads: LTTB max_points")
    parser.add_argument("--repeat", type=int, default=3, help="reads: LTTB runs (median)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_file_limit()
    errors: Errors = collections.Counter()
    result: Result | None = None
    try:
        result = asyncio.run(MODES[args.mode](args, errors))
    except (WebSocketException, OSError, ConnectionError, TimeoutError) as exc:
        errors[exception_text(exc)] += 1
    texts = [f"{text} (x{n})" if n > 1 else text for text, n in errors.items()]
    print(Report(args.mode, result, texts).to_json(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
