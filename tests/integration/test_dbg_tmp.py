import asyncio, time, traceback
from protocol.requests import WhoAmI, LogMetric, CreateExperiment, encode_request
from tests.conftest import hash_of
from websockets.exceptions import ConnectionClosed
from server import connection

async def test_busy(start_daemon, monkeypatch):
    orig = connection.Connection._reader
    async def reader(self, tg):
        try:
            await orig(self, tg)
            print("READER returned normally")
        except BaseException as e:
            print("READER raised", time.monotonic(), self._accepted, self._sent)
            raise
    monkeypatch.setattr(connection.Connection, "_reader", reader)
    import anyio
    from websockets.exceptions import ConnectionClosed as CC
    async def serve(self):
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, tg)
                with self._reading:
                    await self._reader(tg)
                print("after reading scope", time.monotonic())
                await self._queue.put(connection._END)
                print("END put", time.monotonic())
                await self._writer_done.wait()
                print("writer done", time.monotonic())
                tg.cancel_scope.cancel()  # a watch pump, if any
            print("tg exited", time.monotonic())
        except CC:
            print("CC")
        except BaseException as e:
            print("serve raised", type(e), time.monotonic()); raise
        if self.stopping:
            print("closing", time.monotonic())
            await self.ws.close(1001, "server shutting down")
            print("closed", time.monotonic())
    monkeypatch.setattr(connection.Connection, "serve", serve)
    d = await start_daemon()
    c = await d.client()
    commit = b"\x01" * 20
    await c.call(CreateExperiment(key_hash=hash_of("admin"), commit_id=commit, job_name="x"))
    async def sender():
        i = 0
        try:
            while True:
                await c.send(LogMetric(key_hash=hash_of("admin"), commit_id=commit, step=i, value=1.0, name="a"))
                i += 1
                if i % 50 == 0:
                    await asyncio.sleep(0)
        except ConnectionClosed:
            pass
    s = asyncio.create_task(sender())
    n = 0
    t = None
    try:
        while True:
            await asyncio.wait_for(c.recv(), 20)
            n += 1
            if n == 200:
                t = time.monotonic()
                d.app.stop_requested.set(); print("STOP", t)
            if t and n % 5000 == 0:
                (conn,) = d.app.connections
                print(time.monotonic(), "acc", conn._accepted, conn._sent, conn._queue.qsize(), "n", n, "cancel_called", conn._reading.cancel_called, "stopping", conn.stopping, conn._reading._host_task, conn._reading._tasks)
    except ConnectionClosed as e:
        print("BUSY closed", e.rcvd, time.monotonic() - t, n)
    await s
