"""MetricLogger against a daemon subprocess: delivery, steps, policies, restarts."""

import asyncio
import gc
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from fetchml.client import InvalidRequest, MetricLogger, MetricsRejected, NotFound
from fetchml.protocol.enums import ErrorCode, Opcode
from fetchml.protocol.metrics import RECORD_HEAD, RECORD_MIN, scan
from tests.support.daemon import ROOT
from tests.support.daemon import DaemonProcess as ServerProcess
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY

NAMES = (b"loss", b"acc", b"lr", b"grad_norm")
INDEX = {name: i for i, name in enumerate(NAMES)}


def each_record(path: Path) -> Iterator[tuple[bytes, int, float]]:
    """(name, step, value) of every record in the valid prefix of a metrics.bin."""
    data = path.read_bytes()
    end = scan(data).end
    unpack = RECORD_HEAD.unpack_from
    pos = 0
    while pos < end:
        _, step, value, length = unpack(data, pos)
        yield data[pos + RECORD_MIN : pos + RECORD_MIN + length], step, value
        pos += RECORD_MIN + length


def point(i: int) -> tuple[str, float, int]:
    """The i-th point: names round-robin, step i // 4, a distinct exact value."""
    return NAMES[i % 4].decode(), i * 0.25, i // 4


def count_points(path: Path, total: int) -> tuple[bytearray, int, int]:
    """How often each of the `total` points is in the file, records read, wrong records."""
    seen = bytearray(total)
    records = wrong = 0
    for name, step, value in each_record(path):
        records += 1
        i = step * 4 + INDEX.get(name, 99)
        if i >= total or value != i * 0.25:
            wrong += 1
            continue
        seen[i] = min(seen[i] + 1, 255)
    return seen, records, wrong


def metrics_file(server: ServerProcess, commit: str) -> Path:
    return server.data / commit / "metrics.bin"


def test_delivers_every_point_exactly_once(shared_server: ServerProcess) -> None:
    commit = commit_of("logger-exact")
    total = 200_000
    with MetricLogger(commit, shared_server.url, ADMIN_KEY, job_name="exact") as ml:
        for i in range(total):
            name, value, step = point(i)
            ml.log(name, value, step=step)
    stats = ml.stats()
    assert (stats.acknowledged, stats.buffered, stats.rejected, stats.dropped) == (total, 0, 0, 0)
    assert stats.resent_batches == 0 and stats.reconnects == 0
    seen, records, wrong = count_points(metrics_file(shared_server, commit), total)
    assert (records, wrong) == (total, 0)
    assert seen.count(1) == total


def test_default_steps_log_dict_and_flush(shared_server: ServerProcess) -> None:
    commit = commit_of("logger-steps")
    path = metrics_file(shared_server, commit)
    ml = MetricLogger(commit, shared_server.url, ADMIN_KEY)
    for value in (1.0, 2.0, 3.0):
        ml.log("a", value)
    ml.log("a", 10.0, step=10)
    ml.log("a", 11.0)
    ml.log_dict({"x": 1.0, "y": 2.0})
    ml.log_dict({"x": 3.0, "y": 4.0}, step=7)
    ml.log_dict({"x": 5.0})
    assert ml.flush(timeout=60)
    got = [(name.decode(), step, value) for name, step, value in each_record(path)]
    assert got == [
        ("a", 0, 1.0),
        ("a", 1, 2.0),
        ("a", 2, 3.0),
        ("a", 10, 10.0),
        ("a", 11, 11.0),
        ("x", 0, 1.0),
        ("y", 0, 2.0),
        ("x", 7, 3.0),
        ("y", 7, 4.0),
        ("x", 8, 5.0),
    ]
    assert ml.flush(timeout=60)  # nothing new: returns at once
    assert ml.close() and ml.closed
    with pytest.raises(RuntimeError, match="closed"):
        ml.log("a", 1.0)


def test_invalid_arguments_raise_at_the_call_site(
    shared_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Bad names and steps raise in log() and buffer nothing; values the wire cannot carry
    are counted in MetricsRejected at close, with one log line per distinct problem."""
    commit = commit_of("logger-invalid")
    ml = MetricLogger(commit, shared_server.url, ADMIN_KEY)
    ml.log("ok", 1.0, step=1)
    bad_calls = [
        ("", 1.0, 1, "invalid metric name ''"),
        ("n" * 256, 1.0, 1, "256 bytes"),
        ("a\x00b", 1.0, 1, "0x00"),
        (["no"], 1.0, 1, "must be a str"),
        (7, 1.0, 1, "must be a str"),
        ("ok", 1.0, -1, "step must be an integer"),
        ("ok", 1.0, 2**32, "step must be an integer"),
        ("ok", 1.0, "3", "step must be an integer"),
    ]
    for name, value, step, words in bad_calls:
        with pytest.raises(InvalidRequest, match=re.escape(words)):
            ml.log(name, value, step=step)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="invalid metric name"):
        ml.log_dict({"fine": 1.0, "": 2.0}, step=3)  # all or nothing
    with pytest.raises(InvalidRequest, match="step must be"):
        ml.log_dict({"fine": 1.0}, step=-2)
    assert ml.stats().buffered <= 1
    with caplog.at_level(logging.ERROR, logger="fetchml.client"):
        for step in (2, 3, 4):
            ml.log("ok", "not a number", step=step)  # type: ignore[arg-type]
        ml.log("ok", 2.0, step=5)
        with pytest.raises(MetricsRejected) as rejected:
            ml.close()
    assert rejected.value.count == 3 and "'ok' not sent" in str(rejected.value)
    assert len(rejected.value.reasons) == 1
    assert caplog.text.count("not sent") == 1 and "invalid invalid" not in caplog.text
    assert ml.stats().rejected == 3 and ml.stats().acknowledged == 2
    steps = [step for _, step, _ in each_record(metrics_file(shared_server, commit))]
    assert steps == [1, 5]


def test_server_rejections_raise_once_with_a_count(
    shared_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Points the daemon refuses are never resent; leaving the `with` raises MetricsRejected
    with their number and the server's message, which is logged once however many batches."""
    missing = commit_of("logger-missing")
    with (
        caplog.at_level(logging.WARNING, logger="fetchml.client"),
        pytest.raises(MetricsRejected) as rejected,
        MetricLogger(
            missing, shared_server.url, ADMIN_KEY, create_experiment=False, batch_size=10
        ) as ml,
    ):
        for step in range(100):
            ml.log("loss", 1.0, step=step)
    assert rejected.value.count == 100 and rejected.value.code == ErrorCode.RESOURCE_NOT_FOUND
    assert rejected.value.reasons == {f"experiment {missing} not found": 100}
    assert caplog.text.count("not found") == 1
    stats = ml.stats()
    assert (stats.rejected, stats.acknowledged, stats.resent_batches) == (100, 0, 0)
    assert isinstance(stats.last_error, NotFound)
    assert not metrics_file(shared_server, missing).exists()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fetchml.client"):
        quiet = MetricLogger(
            missing, shared_server.url, ADMIN_KEY, create_experiment=False, on_error="warn"
        )
        quiet.log("loss", 1.0)
        assert quiet.flush() is False
        quiet.log("loss", 2.0)
        assert quiet.close() is False
    assert caplog.text.count("1 metric point rejected") == 2


def test_drop_policy_warns_once_then_delivers_after_late_start(
    server_process: ServerProcess,
) -> None:
    """No daemon yet: the buffer fills and drops; the logger connects once it starts."""
    commit = commit_of("logger-drop")
    ml = MetricLogger(commit, server_process.url, ADMIN_KEY, max_buffer=10, on_full="drop")
    with pytest.warns(RuntimeWarning, match="buffer full") as warned:
        for i in range(15):
            ml.log("loss", float(i), step=i)
    assert len(warned) == 1
    assert ml.stats().dropped == 5
    server_process.start()
    assert ml.close(timeout=60)
    steps = [step for _, step, _ in each_record(metrics_file(server_process, commit))]
    assert steps == list(range(10))


def test_a_logged_point_leaves_no_object_for_the_collector(
    server_process: ServerProcess,
) -> None:
    """log() queues a point's four items, not a tuple: nothing it leaves behind is tracked by
    the garbage collector, so a million buffered points set off no collection."""
    ml = MetricLogger(commit_of("logger-gc"), server_process.url, ADMIN_KEY, on_full="drop")
    n = 10_000
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for i in range(n):
            ml.log("loss", i * 0.5, step=i)
        tracked = gc.get_count()[0] - before
    finally:
        gc.enable()
    print(f"{tracked} tracked objects left by {n} points")
    assert ml.stats().buffered == n  # no daemon yet: every point is still in the queue
    assert tracked < n // 10
    server_process.start()
    assert ml.close(timeout=60) and ml.acknowledged == n


def test_block_policy_waits_for_the_daemon(
    server_process: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    commit = commit_of("logger-block")
    ml = MetricLogger(commit, server_process.url, ADMIN_KEY, max_buffer=100, batch_size=10)

    def produce() -> None:
        for i in range(300):
            ml.log("loss", float(i), step=i)

    with caplog.at_level(logging.WARNING, logger="fetchml.client.logger"):
        producer = threading.Thread(target=produce)
        producer.start()
        producer.join(0.2)
        assert producer.is_alive()  # nothing can be acknowledged without a daemon
        assert ml.stats().buffered <= 101
        server_process.start()
        producer.join(60)
        assert not producer.is_alive()
    assert caplog.text.count("buffer full") == 1
    assert ml.close(timeout=60)
    steps = [step for _, step, _ in each_record(metrics_file(server_process, commit))]
    assert steps == list(range(300))


def test_one_million_points_survive_a_daemon_kill(server_process: ServerProcess) -> None:
    """SIGKILL the daemon mid-stream, start it again on the same port and data:
    every point is in the file exactly once (the logger is the experiment's only writer)."""
    server_process.start()
    commit = commit_of("logger-million")
    total = 1_000_000
    half = 300_000
    ml = MetricLogger(commit, server_process.url, ADMIN_KEY)
    for i in range(half):
        name, value, step = point(i)
        ml.log(name, value, step=step)
    assert ml.flush(timeout=90)
    for i in range(half, total):
        name, value, step = point(i)
        ml.log(name, value, step=step)
    deadline = time.monotonic() + 60
    while ml.acknowledged < half + 50_000 and time.monotonic() < deadline:
        time.sleep(0.005)  # polling a condition: until the second half is streaming
    acked_at_kill = ml.acknowledged
    server_process.kill()
    server_process.start()
    assert ml.close(timeout=90)
    stats = ml.stats()
    assert stats.acknowledged == total and stats.rejected == 0 and stats.dropped == 0
    assert stats.reconnects >= 1
    seen, records, wrong = count_points(metrics_file(server_process, commit), total)
    assert wrong == 0
    assert seen.count(0) == 0, f"{seen.count(0)} points lost (acked at kill: {acked_at_kill})"
    assert seen.count(1) == total == records
    print(f"acknowledged at the kill: {acked_at_kill:,}; found stored: {stats.recovered:,}")


def test_points_are_flushed_at_exit(shared_server: ServerProcess) -> None:
    """A script that never calls close(): the atexit hook delivers what it logged."""
    commit = commit_of("logger-atexit")
    script = (
        "from fetchml import MetricLogger\n"
        f"ml = MetricLogger({commit!r}, {shared_server.url!r}, {ADMIN_KEY!r})\n"
        "for i in range(5000):\n"
        "    ml.log('loss', i / 2, step=i)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    got = [(step, value) for _, step, value in each_record(metrics_file(shared_server, commit))]
    assert got == [(i, i / 2) for i in range(5000)]


def test_full_batches_go_out_without_waiting_for_the_flush_interval(
    shared_server: ServerProcess,
) -> None:
    """Partial batches wait for flush_interval; full ones are sent within 50 ms of logging
    (asserted at 10x, and printed)."""
    commit = commit_of("logger-full-batches")
    ml = MetricLogger(commit, shared_server.url, ADMIN_KEY, batch_size=100, flush_interval=60)
    assert ml.flush()  # the worker is connected and waiting
    started = time.monotonic()
    for step in range(1_050):
        ml.log("loss", 1.0, step=step)
    while ml.acknowledged < 1_000 and time.monotonic() - started < 10:
        time.sleep(0.001)  # polling a condition: until the full batches are acknowledged
    seconds = time.monotonic() - started
    print(f"10 full batches acknowledged {seconds * 1000:.0f} ms after the first log()")
    assert ml.acknowledged == 1_000 and seconds < 0.5
    assert ml.close()
    assert ml.acknowledged == 1_050


def test_batches_are_cut_at_the_message_size(shared_server: ServerProcess) -> None:
    """10,000 points with 255-byte names are 2.7 MB: with batch_size 65535 they are cut
    at max_message_bytes (the daemon's 1 MiB), never sent as one message it closes on."""
    commit = commit_of("logger-message-size")
    names = ["a" * 255, "b" * 255]
    ml = MetricLogger(commit, shared_server.url, ADMIN_KEY, batch_size=65535, close_timeout=10)
    for i in range(10_000):
        ml.log(names[i % 2], float(i), step=i)
    assert ml.close()
    stats = ml.stats()
    assert (stats.acknowledged, stats.reconnects, stats.resent_batches) == (10_000, 0, 0)
    steps = [step for _, step, _ in each_record(metrics_file(shared_server, commit))]
    assert steps == list(range(10_000))
    with pytest.raises(InvalidRequest, match="max_message_bytes must be at least 315"):
        MetricLogger(commit, shared_server.url, ADMIN_KEY, max_message_bytes=314)


def test_answers_read_together_are_taken_in_one_pump(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches cut together go in one write, and the answers the daemon writes together are
    followed by one pump of the queue, not one each (with the caller's thread busy in
    Python, a pump per answer let the queue outgrow the pipeline)."""
    from fetchml.client.shipper import Shipper

    pumps = 0
    pump = Shipper._pump

    def counted(self: Shipper) -> None:
        nonlocal pumps
        pumps += 1
        pump(self)

    monkeypatch.setattr(Shipper, "_pump", counted)
    commit = commit_of("logger-answers-together")
    ml = MetricLogger(commit, shared_server.url, ADMIN_KEY, batch_size=100, flush_interval=60)
    assert ml.flush()
    pumps = 0
    for step in range(5_000):
        ml.log("loss", 1.0, step=step)
    assert ml.close()
    print(f"50 batches acknowledged, {pumps} pumps")
    assert ml.acknowledged == 5_000 and pumps <= 25


def test_a_flush_sends_its_batch_from_the_wake_up_itself(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """log() + flush() one at a time, sent by the worker (a flush given its own timeout does
    not send from the caller's thread): the worker writes each batch in the callback the
    caller's wake-up runs (or in its session task, before the first answer), with no task
    started for it: one would cost the blocking call another turn of the worker's loop."""
    from fetchml import frames
    from fetchml.client import pipeline

    writers: list[str] = []

    def watched(write: Callable[[Any, Sequence[bytes]], None]) -> Callable[..., None]:
        def recorded(ws: Any, packets: Sequence[bytes]) -> None:
            if packets[0][0] == Opcode.LOG_METRICS_AT:
                task = asyncio.current_task()
                writers.append(task.get_coro().__qualname__ if task else "")  # type: ignore[union-attr]
            write(ws, packets)

        return recorded

    monkeypatch.setattr(pipeline, "write_frames", watched(frames.write_frames), raising=False)
    monkeypatch.setattr(frames, "write_frames", watched(frames.write_frames))
    ml = MetricLogger(commit_of("logger-wake-up"), shared_server.url, ADMIN_KEY, flush_interval=60)
    for step in range(20):
        ml.log("loss", 1.0, step=step)
        assert ml.flush(timeout=30.0)
    assert ml.close()
    print(f"20 flushes, batches written in: {sorted(set(writers))}")
    assert len(writers) == 20 and set(writers) <= {"", "Shipper.run"}
