"""MetricLogger.flush() sending from the caller's thread: on its own blocking connection,
while the worker's session is live and nothing else is in flight; anything but a plain
acknowledgement is handed to the worker, which reconnects and reconciles as for its own."""

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fetchml.client import Client, ConnectionLost, MetricLogger, SyncClient
from fetchml.protocol.enums import Opcode
from tests.support.daemon import DaemonProcess
from tests.support.keys import ADMIN_KEY
from tests.support.loggers import inline_flushes, stored_points


def test_a_flush_sends_its_points_without_the_worker(
    shared_server: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first, each log() + flush() is one round trip in the caller's thread: the
    worker is not woken and writes no LOG_METRICS_AT."""
    from fetchml import frames
    from fetchml.client import pipeline

    ml = MetricLogger(url=shared_server.url, api_key=ADMIN_KEY, name="inline", flush_interval=60)
    ml.log("loss", 0.0, step=0)
    assert ml.flush()
    worker_writes: list[int] = []

    def watched(write: Callable[[Any, Sequence[bytes]], None]) -> Callable[..., None]:
        def recorded(ws: Any, packets: Sequence[bytes]) -> None:
            worker_writes.extend(p[0] for p in packets if p[0] == Opcode.LOG_METRICS_AT)
            write(ws, packets)

        return recorded

    monkeypatch.setattr(pipeline, "write_frames", watched(frames.write_frames), raising=False)
    monkeypatch.setattr(frames, "write_frames", watched(frames.write_frames))
    nudges: list[None] = []
    real_nudge = ml._worker.nudge
    monkeypatch.setattr(ml._worker, "nudge", lambda: nudges.append(real_nudge()))
    results = inline_flushes(monkeypatch)
    for step in range(1, 21):
        ml.log("loss", step * 0.5, step=step)
        assert ml.flush() and ml.acknowledged == step + 1
    print(f"20 flushes: {sum(results)} sent by the caller, {len(worker_writes)} by the worker")
    assert results == [True] * 20 and not worker_writes and not nudges
    assert ml.close()
    assert stored_points(shared_server.data, ml.run_id) == {("loss", step): 1 for step in range(21)}


def flushed_once(url: str, name: str) -> tuple[MetricLogger, SyncClient]:
    """A logger that has sent one point from the caller's thread, and the connection it
    sent it on."""
    ml = MetricLogger(url=url, api_key=ADMIN_KEY, name=name)
    ml.log("loss", 0.0, step=0)
    assert ml.flush()
    return ml, ml._ship._inline_client()


def test_a_lost_answer_is_reconciled_not_sent_twice(
    shared_server: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon stores a point sent from the caller's thread, and the answer is lost with
    the connection: the worker reconnects, finds the point stored and does not resend it."""
    ml, client = flushed_once(shared_server.url, "inline-lost")
    real = client.exchange

    def answer_lost(messages: Sequence[bytes]) -> list[bytes]:
        real(messages)  # stored and acknowledged; the acknowledgement never arrives
        client._drop()
        raise ConnectionLost("connection reset")

    monkeypatch.setattr(client, "exchange", answer_lost)
    results = inline_flushes(monkeypatch)
    ml.log("loss", 1.0, step=1)
    assert ml.flush()
    monkeypatch.undo()
    for step in range(2, 5):
        ml.log("loss", step * 1.0, step=step)
        assert ml.flush()
    assert ml.close()
    stats = ml.stats()
    print(f"lost answer: {stats.recovered} recovered, {stats.reconnects} reconnects")
    assert results == [False] and stats.recovered == 1 and stats.reconnects == 1
    assert stats.acknowledged == 5
    assert stored_points(shared_server.data, ml.run_id) == {("loss", step): 1 for step in range(5)}


def test_a_refused_batch_goes_back_to_the_worker(
    server_process: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The experiment is pruned between two flushes: the one sent from the caller's thread
    is refused (RESOURCE_NOT_FOUND), and the worker creates the experiment again and
    delivers it."""
    server = server_process.start()
    ml = MetricLogger(url=server.url, api_key=ADMIN_KEY, name="inline-pruned")
    ml.log("loss", 0.0, step=0)
    assert ml.flush()

    async def prune() -> list[str]:
        async with Client.connect(server.url, api_key=ADMIN_KEY) as client:
            await client.create_experiment("00" * 20)  # newer, or first of a tie: kept
            return await client.prune(keep=1)

    assert asyncio.run(prune()) == [ml.run_id]
    results = inline_flushes(monkeypatch)
    ml.log("loss", 1.0, step=1)
    assert ml.flush()
    assert ml.close()
    assert results == [False] and ml.stats().rejected == 0
    assert stored_points(server.data, ml.run_id) == {("loss", 1): 1}


def test_flushes_from_threads_while_another_logs(
    shared_server: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads log and flush one point at a time while a third logs without flushing:
    each flush sees its own points acknowledged, and every point is stored once."""
    results = inline_flushes(monkeypatch)
    ml = MetricLogger(
        url=shared_server.url, api_key=ADMIN_KEY, name="inline-threads", flush_interval=0.005
    )
    failures: list[str] = []

    def flushing(name: str) -> None:
        for step in range(150):
            ml.log(name, 1.0, step=step)
            if not ml.flush() or ml.acknowledged < step + 1:
                failures.append(f"{name} {step}")

    def logging_only() -> None:
        for step in range(3000):
            ml.log("bulk", 2.0, step=step)

    threads = [threading.Thread(target=flushing, args=(name,)) for name in ("a", "b")]
    threads.append(threading.Thread(target=logging_only))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ml.close()
    counts = stored_points(shared_server.data, ml.run_id)
    print(f"{len(results)} flushes, {sum(results)} sent by the caller")
    assert not failures and any(results)
    assert counts == Counter(
        {(name, step): 1 for name in ("a", "b") for step in range(150)}
        | {("bulk", step): 1 for step in range(3000)}
    )


def test_the_logger_closes_its_own_connection(shared_server: DaemonProcess) -> None:
    ml = MetricLogger(url=shared_server.url, api_key=ADMIN_KEY, name="inline-close")
    ml.log("loss", 0.0)
    assert ml.flush() and ml.flush()
    client = ml._ship._inline
    assert client is not None and client._link is not None
    assert ml.close()
    assert client.closed and client._link is None


def test_an_interrupted_flush_leaves_nothing_stuck(
    shared_server: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a flush waits for its answer in the caller's thread: the interrupt goes
    up, the worker takes the point back (found stored, not sent twice), and the next flush
    and close() work."""
    ml, client = flushed_once(shared_server.url, "inline-interrupted")
    real = client.exchange

    def interrupted(messages: Sequence[bytes]) -> list[bytes]:
        real(messages)
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "exchange", interrupted)
    ml.log("loss", 1.0, step=1)
    with pytest.raises(KeyboardInterrupt):
        ml.flush()
    monkeypatch.undo()
    ml.log("loss", 2.0, step=2)
    assert ml.flush(timeout=30) and ml.close()
    assert ml.stats().recovered == 1
    assert stored_points(shared_server.data, ml.run_id) == {("loss", step): 1 for step in range(3)}
