"""A real daemon in the test's own event loop (App on 127.0.0.1, port 0)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from fetchml.server.app import App
from fetchml.server.config import Config

from .config import make_config
from .wire import RawClient


@dataclass
class Daemon:
    app: App
    url: str
    config: Config

    async def client(self, **kwargs: Any) -> RawClient:
        ws = await connect(self.url, compression=None, max_size=None, **kwargs)
        return RawClient(ws)


DaemonFactory = Callable[..., Any]
"""`await start_daemon(config=None, **sections) -> Daemon`."""


@contextlib.asynccontextmanager
async def in_process_daemons(home: Path) -> AsyncIterator[DaemonFactory]:
    """Start daemons in this event loop (config from `make_config(home, **sections)` unless
    given); all are stopped at the end."""
    running: list[tuple[App, asyncio.Task[None]]] = []

    async def start(config: Config | None = None, **sections: dict[str, Any]) -> Daemon:
        cfg = config or make_config(home, **sections)
        app = App(cfg)
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(app.run(lambda port: ready.set_result(port), False))
        running.append((app, task))
        done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        return Daemon(app, f"ws://127.0.0.1:{ready.result()}/ws", cfg)

    try:
        yield start
    finally:
        for app, task in running:
            app.stop_requested.set()
            await asyncio.wait_for(task, 30)
