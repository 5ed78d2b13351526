"""MetricLogger.log() encoding in the caller's thread once Batcher.lag points wait: a caller
logging in a tight loop holds the interpreter lock, and the worker, which gets it once per
switch interval, would otherwise leave the backlog for close()."""

import threading

import pytest

from fetchml.client import MetricLogger
from fetchml.client.batches import Batcher, Encoded
from fetchml.client.encoding import Columns
from tests.support.daemon import DaemonProcess
from tests.support.keys import ADMIN_KEY
from tests.support.loggers import stored_records


def test_points_waiting_past_the_lag_are_encoded_by_the_caller(
    server_process: DaemonProcess,
) -> None:
    """No daemon yet, so the worker takes nothing: the queue still never holds more than
    `lag` points, the rest are batched, and all arrive once, in order, when it starts."""
    ml = MetricLogger(url=server_process.url, api_key=ADMIN_KEY, name="lag", batch_size=10)
    batcher = ml._batcher
    assert batcher.lag == 10_000
    for i in range(15_000):
        ml.log("loss", float(i))
        assert batcher.waiting <= batcher.lag
    print(f"15,000 logged: {batcher.waiting} waiting, {batcher.held} batched by the caller")
    assert batcher.held >= 15_000 - batcher.lag and ml.stats().buffered == 15_000
    server_process.start()
    assert ml.close(timeout=60) and ml.acknowledged == 15_000
    assert stored_records(server_process.data, ml.run_id) == [
        ("loss", i, float(i)) for i in range(15_000)
    ]


def test_an_interrupted_catch_up_loses_nothing(
    server_process: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the caller encodes its claim: the claim is encoded again, from the same
    default steps, and batched; the interrupted log() call logged nothing."""
    ml = MetricLogger(url=server_process.url, api_key=ADMIN_KEY, name="lag-ki", batch_size=10)
    real = Batcher.encode
    interrupted: list[int] = []

    def once(batcher: Batcher, claim: Columns) -> Encoded:
        if not interrupted and threading.current_thread() is threading.main_thread():
            interrupted.append(len(claim[0]))
            real(batcher, claim)  # advances the default steps, as an interrupt late in it would
            raise KeyboardInterrupt
        return real(batcher, claim)

    monkeypatch.setattr(Batcher, "encode", once)
    logged = 0
    with pytest.raises(KeyboardInterrupt):
        for i in range(20_000):
            ml.log("loss", float(i))
            logged += 1
    assert interrupted == [10_000] and logged == 10_000
    for i in range(10_000, 10_020):
        ml.log("loss", float(i))
    server_process.start()
    assert ml.close(timeout=60) and ml.acknowledged == 10_020
    assert stored_records(server_process.data, ml.run_id) == [
        ("loss", i, float(i)) for i in range(10_020)
    ]


def test_threads_catching_up_together_keep_each_ones_order(shared_server: DaemonProcess) -> None:
    """Four threads log past the lag at once: every point is stored once, and each thread's
    steps are in its own logging order."""
    ml = MetricLogger(url=shared_server.url, api_key=ADMIN_KEY, name="lag-threads", batch_size=10)
    per_thread = 25_000

    def produce(name: str) -> None:
        for i in range(per_thread):
            ml.log(name, float(i))

    threads = [threading.Thread(target=produce, args=(f"t{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert ml.close(timeout=60) and ml.acknowledged == 4 * per_thread
    records = stored_records(shared_server.data, ml.run_id)
    for k in range(4):
        mine = [(step, value) for name, step, value in records if name == f"t{k}"]
        assert mine == [(i, float(i)) for i in range(per_thread)]
    assert len(records) == 4 * per_thread
