"""Shared fixtures: a real daemon on 127.0.0.1 port 0 and a raw protocol client."""

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from fetchml.protocol.requests import Request, encode_request
from fetchml.protocol.responses import Response, decode_response
from fetchml.server.app import App
from fetchml.server.config import Config, parse_config

KEYS = {
    "admin": ("root", "fml_test_admin_key"),
    "alice": ("researcher", "fml_test_alice_key"),
    "bob": ("researcher", "fml_test_bob_key"),
    "ana": ("analyst", "fml_test_analyst_key"),
    "wendy": ("worker", "fml_test_worker_key"),
}
"""user -> (role, raw key); "root" is the built-in admin role under another name."""


def key_hash(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()[:16]


def hash_of(user: str) -> bytes:
    return key_hash(KEYS[user][1])


def make_config(tmp_path: Path, **sections: dict[str, Any]) -> Config:
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "storage": {
            "base_path": str(tmp_path / "experiments"),
            "jobs_db": str(tmp_path / "jobs.sqlite3"),
        },
        "auth": {
            "api_keys": {
                user: {"hash": hashlib.sha256(key.encode()).hexdigest(), "role": role}
                for user, (role, key) in KEYS.items()
            },
            "roles": {"root": {"permissions": ["*"], "scope": "all"}},
        },
        "logging": {"audit_file": str(tmp_path / "audit.jsonl")},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config(raw)


class RawClient:
    """A websockets client speaking the binary protocol, one request at a time or pipelined."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, req: Request | bytes) -> None:
        await self.ws.send(req if isinstance(req, bytes) else encode_request(req))

    async def recv(self) -> Response:
        data = await self.ws.recv()
        assert isinstance(data, bytes)
        return decode_response(data)

    async def call(self, req: Request | bytes) -> Response:
        await self.send(req)
        return await self.recv()


@dataclass
class Daemon:
    app: App
    url: str
    config: Config

    async def client(self, **kwargs: Any) -> RawClient:
        ws = await connect(self.url, compression=None, max_size=None, **kwargs)
        return RawClient(ws)


DaemonFactory = Callable[..., Any]


@pytest.fixture
async def start_daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    """Start real daemons in this event loop: `await start_daemon(server={...})`."""
    running: list[tuple[App, asyncio.Task[None]]] = []

    async def start(config: Config | None = None, **sections: dict[str, Any]) -> Daemon:
        cfg = config or make_config(tmp_path, **sections)
        app = App(cfg)
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(app.run(lambda port: ready.set_result(port), False))
        running.append((app, task))
        done, _ = await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        return Daemon(app, f"ws://127.0.0.1:{ready.result()}/ws", cfg)

    yield start
    for app, task in running:
        app.stop_requested.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def daemon(start_daemon: DaemonFactory) -> Daemon:
    return await start_daemon()  # type: ignore[no-any-return]


def with_config(cfg: Config, **server: Any) -> Config:
    return replace(cfg, server=replace(cfg.server, **server))
