"""watch(): backfill then live, name filter, resume after 1008 and after daemon restarts."""

import asyncio
import signal

import pytest

from fetchml.client import Client, Metric, MetricWatch, NotFound, WatchOptions, resolve_settings
from tests.support.daemon import DaemonProcess
from tests.support.experiments import commit_of
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN_KEY

C = commit_of("watch")


class Collector:
    """Consumes a watch in a task; `until(n)` waits for n records."""

    def __init__(self, watch: MetricWatch) -> None:
        self.watch = watch
        self.records: list[Metric] = []
        self.nexts: list[int] = []
        self._grew = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for batch in self.watch:
            assert batch.records
            self.records.extend(batch.records)
            self.nexts.append(batch.next)
            self._grew.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(60):
            while len(self.records) < count:
                self._grew.clear()
                if self.task.done():
                    self.task.result()
                    raise AssertionError("watch ended early")
                await self._grew.wait()

    async def close(self) -> None:
        await self.watch.aclose()
        await self.task


def batch(start: int, count: int, name: str = "loss") -> list[tuple[str, float, int]]:
    return [(name, i * 0.5, i) for i in range(start, start + count)]


async def test_backfill_then_live(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:
        await c.create_experiment(C)
        await c.log_metrics(C, batch(0, 100))
        got = Collector(c.watch(C))
        await got.until(100)
        await c.log_metrics(C, batch(100, 50))
        await c.log_metric(C, "acc", 1.0, 7)
        await got.until(151)
        assert got.records == await c.query(C)
        assert got.nexts[-1] == 151 and got.watch.next == 151
        await got.close()
        # resuming from a cursor, filtered by name, and waiting past the end
        named = Collector(c.watch(C, from_index=140, name="acc"))
        tail = Collector(c.watch(C, from_index=151))
        await named.until(1)
        assert [(r.name, r.step) for r in named.records] == [("acc", 7)]
        await c.log_metric(C, "loss", 9.0, 999)
        await tail.until(1)
        assert [(r.step, r.value) for r in tail.records] == [(999, 9.0)]
    # closing the client closed its watches
    assert named.task.done() and tail.task.done()


async def test_watch_of_a_missing_experiment_raises(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:
        with pytest.raises(NotFound):
            async for _ in c.watch(commit_of("nothing here")):
                pass


async def test_slow_subscriber_resumes_without_gap_or_duplicate(
    start_daemon: DaemonFactory,
) -> None:
    """The consumer stops reading while ~22 MB of live pushes arrive: socket buffers
    fill, the server's send blocks, queued pushes outgrow the 1 KiB watch buffer and
    the server closes 1008. Once reading again, the watch resumes from its last
    `next`: every record exactly once, in order."""
    d = await start_daemon(server={"watch_buffer_bytes": 1024})
    name = "n" * 200  # 221-byte records: many bytes for few records
    async with Client.connect(d.url, api_key=ADMIN_KEY) as c:
        await c.create_experiment(C)
        await c.log_metrics(C, batch(0, 10, name))
        watch = c.watch(C, options=WatchOptions(initial_backoff=0.01))
        records = list((await anext(watch)).records)
        assert len(records) == 10
        for k in range(1000):  # not reading meanwhile: 22 MB, one 21 KB push per request
            await c.log_metrics(C, batch(10 + 100 * k, 100, name))
        async with asyncio.timeout(60):
            while len(records) < 100_010:
                records.extend((await anext(watch)).records)
        assert records == await c.query(C)
        assert watch.reconnects >= 1
        await watch.aclose()


async def test_watch_survives_daemon_restarts(server_process: DaemonProcess) -> None:
    """SIGTERM, start again, write; SIGKILL, start again, write: no gap, no duplicate."""
    await asyncio.to_thread(server_process.start)
    settings = resolve_settings(server_process.url, ADMIN_KEY)
    got = Collector(MetricWatch(settings, bytes.fromhex(C), options=WatchOptions()))
    with pytest.raises(NotFound):  # the experiment does not exist yet
        await got.task
    async with Client.connect(server_process.url, api_key=ADMIN_KEY) as c:
        await c.create_experiment(C)
        await c.log_metrics(C, batch(0, 1000))
    got = Collector(MetricWatch(settings, bytes.fromhex(C), options=WatchOptions()))
    await got.until(1000)

    for sig, start in ((signal.SIGTERM, 1000), (signal.SIGKILL, 2000)):
        await asyncio.to_thread(server_process.stop, sig)
        await asyncio.to_thread(server_process.start)
        async with Client.connect(server_process.url, api_key=ADMIN_KEY) as c:
            for k in range(10):
                await c.log_metrics(C, batch(start + 100 * k, 100))
        await got.until(start + 1000)

    async with Client.connect(server_process.url, api_key=ADMIN_KEY) as c:
        assert got.records == await c.query(C)
    assert len(got.records) == 3000
    assert got.watch.reconnects >= 2
    assert got.nexts == sorted(got.nexts)
    await got.close()
