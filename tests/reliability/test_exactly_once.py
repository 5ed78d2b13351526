"""A MetricLogger's points reach its run exactly once, in order, with their own time,
while the daemon is SIGKILLed at random moments and restarted on the same data.

A thread of this process logs distinct values (value = step = the point's index) without
pause, noting the clock around each log() call; the test waits until the logger
delivers again after each restart, lets it stream a few random milliseconds (batches of
25 in flight every 5 ms), then kills the daemon; every other cycle it kills as soon as
the file holds records the logger has not seen acknowledged yet (up to the same random
time), which a random moment alone hits too rarely to count on. The streaming test's
daemon fsyncs before it answers, so that moment lasts an fsync, not the microseconds
between a write and its answer (at those, a quiet machine lost no answer in 50 kills).
Acknowledgements lost with the kill
leave batches stored whose answers never came, and a kill inside a write leaves a
prefix of one: after each reconnect the logger must skip exactly those. At the end the
run holds every point once, in logging order, each stamped with the second it was
logged.

50 cycles by default; FETCHML_LONG=1 runs 500. FETCHML_SEED picks the random moments.
"""

import asyncio
import logging
import os
import random
import threading
import time
from pathlib import Path

import pytest

from fetchml.client import Client, Metric, MetricLogger
from tests.support.config import raw_config, write_config
from tests.support.daemon import DaemonProcess, free_port
from tests.support.keys import ADMIN_KEY
from tests.support.loggers import inline_flushes

LONG = os.environ.get("FETCHML_LONG") == "1"
CYCLES = 500 if LONG else 50
SEED = int(os.environ.get("FETCHML_SEED", "9103"))
MAX_STREAM_S = 0.03
"""The kill comes this long at most after the logger delivers again."""
PACE = 0.0002
"""How often the test wakes while it waits for a random moment to kill."""
BURST = 5
"""Points logged between pauses of a millisecond (about 4,000 points a second)."""


def daemon(home: Path, durability: str = "write") -> DaemonProcess:
    port = free_port()
    raw = raw_config(
        home,
        server={"port": port, "shutdown_timeout_s": 5},
        rate_limit={"control_requests_per_minute": 1_000_000},
        storage={"durability": durability},
    )
    config = write_config(home / "config.yaml", raw)
    return DaemonProcess(
        config, home / "daemon.log", data=home / "experiments", port=port, measured=False
    )


class Logging(threading.Thread):
    """Logs point i as ("v", i, step=i), noting int(time) before and after each call."""

    def __init__(self, ml: MetricLogger) -> None:
        super().__init__(name="training-loop", daemon=True)
        self.ml = ml
        self.times: list[tuple[int, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        log, times, clock = self.ml.log, self.times, time.time
        i = 0
        while not self.stop.is_set():
            for _ in range(BURST):
                before = clock()
                log("v", float(i), step=i)
                times.append((int(before), int(clock())))
                i += 1
            time.sleep(0.001)


def stored(server: DaemonProcess, run_id: str) -> int:
    """Records in the run's metrics.bin (each of name "v": 22 bytes)."""
    try:
        return (server.data / run_id / "metrics.bin").stat().st_size // 22
    except FileNotFoundError:
        return 0


def read_all(url: str, run_id: str) -> list[Metric]:
    async def read() -> list[Metric]:
        async with Client.connect(url, api_key=ADMIN_KEY) as client:
            return await client.query(run_id)

    return asyncio.run(read())


def kill_while_logging(
    server: DaemonProcess, ml: MetricLogger, cycles: int, rng: random.Random, poll: float
) -> None:
    """SIGKILL the daemon `cycles` times, restarting it after each but the last: each time
    once the logger delivers to it, after a random moment up to MAX_STREAM_S (waking every
    PACE seconds, which keeps a logging thread in this process from having the interpreter
    lock to itself), or (every other cycle) as soon as the file holds records the logger
    has not seen acknowledged, looking every `poll` seconds (0: without letting go of the
    interpreter lock, which holds the logging thread back just after its answer came)."""
    for cycle in range(cycles):
        if cycle:
            server.start()
        acked = ml.acknowledged
        deadline = time.monotonic() + 30
        while ml.acknowledged == acked:  # polling: until it delivers on this daemon
            assert time.monotonic() < deadline, f"cycle {cycle}: nothing delivered"
            time.sleep(0.001)
        until = time.monotonic() + rng.uniform(0, MAX_STREAM_S)
        while time.monotonic() < until:  # polling: for the moment to kill
            if not cycle % 2:
                time.sleep(PACE)
            elif stored(server, ml.run_id) > ml.acknowledged:
                break
            elif poll:
                time.sleep(poll)
        server.kill()


def test_every_point_once_in_order_across_kills(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fetchml.client.shipper")
    rng = random.Random(SEED)
    server = daemon(tmp_path, "fsync").start()  # an fsync between a write and its answer
    ml = MetricLogger(
        url=server.url,
        api_key=ADMIN_KEY,
        name="kill9",
        batch_size=25,
        flush_interval=0.005,
        max_backoff=0.05,
        close_timeout=120,
    )
    loop = Logging(ml)
    loop.start()
    began = time.monotonic()
    try:
        kill_while_logging(server, ml, CYCLES, rng, poll=PACE)
    finally:
        loop.stop.set()
        loop.join()
        server.start()
    assert ml.close()
    elapsed = time.monotonic() - began
    records = read_all(server.url, ml.run_id)
    server.close()
    stats = ml.stats()
    print(
        f"{CYCLES} kills in {elapsed:.1f} s: {len(loop.times):,} points logged, "
        f"{len(records):,} stored, {stats.recovered:,} found stored after a lost answer, "
        f"{stats.resent_batches:,} batches resent, "
        f"{stats.reconnects} reconnects"
    )
    assert stats.reconnects >= CYCLES and stats.acknowledged == len(loop.times)
    assert len(records) == len(loop.times)
    for i, (record, (low, high)) in enumerate(zip(records, loop.times, strict=True)):
        assert (record.name, record.step, record.value) == ("v", i, float(i)), f"record {i}"
        assert low <= record.timestamp <= high, f"record {i}: {record.timestamp}"
    assert "possible duplicates" not in caplog.text
    assert stats.recovered > 0, "no kill lost an answer: the test did not test the skip"


FLUSH_CYCLES = 200 if LONG else 16


class Flushing(threading.Thread):
    """Logs point i as ("v", i, step=i) and flushes after each, noting the clock around the
    log() call and what each flush returned."""

    def __init__(self, ml: MetricLogger) -> None:
        super().__init__(name="one-at-a-time", daemon=True)
        self.ml = ml
        self.times: list[tuple[int, int]] = []
        self.flushed: list[bool] = []
        self.stop = threading.Event()

    def run(self) -> None:
        log, flush, clock = self.ml.log, self.ml.flush, time.time
        i = 0
        while not self.stop.is_set():
            before = clock()
            log("v", float(i), step=i)
            self.times.append((int(before), int(clock())))
            self.flushed.append(flush())
            i += 1


def test_points_flushed_one_at_a_time_once_in_order_across_kills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """log() + flush() per point, most of them sent from the caller's thread on its own
    connection (Shipper.flush_inline), while the daemon is SIGKILLed: every flush returns
    True, the run holds every point once, in order, and answers lost with a kill were
    found stored, not sent again."""
    caplog.set_level(logging.WARNING, logger="fetchml.client.shipper")
    inline = inline_flushes(monkeypatch)
    rng = random.Random(SEED)
    server = daemon(tmp_path).start()
    ml = MetricLogger(
        url=server.url, api_key=ADMIN_KEY, name="kill9-flush", max_backoff=0.05, close_timeout=120
    )
    loop = Flushing(ml)
    loop.start()
    try:
        kill_while_logging(server, ml, FLUSH_CYCLES, rng, poll=0)
    finally:
        server.start()
        loop.stop.set()
        loop.join()
    assert ml.close()
    records = read_all(server.url, ml.run_id)
    server.close()
    stats = ml.stats()
    print(
        f"{FLUSH_CYCLES} kills: {len(loop.times):,} points flushed one at a time, "
        f"{sum(inline):,} from the caller's thread, {len(records):,} stored, "
        f"{stats.recovered} found stored after a lost answer, {stats.reconnects} reconnects"
    )
    assert all(loop.flushed) and stats.acknowledged == len(loop.times) == len(records)
    for i, (record, (low, high)) in enumerate(zip(records, loop.times, strict=True)):
        assert (record.name, record.step, record.value) == ("v", i, float(i)), f"record {i}"
        assert low <= record.timestamp <= high, f"record {i}: {record.timestamp}"
    assert "possible duplicates" not in caplog.text
    assert sum(inline) > len(loop.times) // 2
    assert stats.recovered > 0, "no kill lost an answer: the test did not test the skip"
