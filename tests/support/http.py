"""Plain HTTP against a daemon: GET, a raw WebSocket upgrade, Prometheus samples, the
audit file."""

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .inproc import Daemon


class HttpResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def http_get(daemon: Daemon, path: str, *headers: str) -> HttpResponse:
    """A plain HTTP/1.1 GET on the daemon's port, over a raw asyncio TCP connection (the
    path sent exactly as given, with any extra `Name: value` header lines)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
    try:
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *rest = head.split("\r\n")
        fields = {}
        for line in rest:
            if line:
                name, _, value = line.partition(":")
                fields[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(fields.get("content-length", "0")))
    finally:
        writer.close()
        await writer.wait_closed()
    return HttpResponse(int(status_line.split()[1]), fields, body)


Headers = list[tuple[str, str]]


async def handshake(daemon: Daemon, headers: Headers | None = None) -> tuple[int, dict[str, str]]:
    """A WebSocket upgrade request with exactly these extra header lines, over raw TCP:
    the HTTP status and headers of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
    try:
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: 127.0.0.1:{daemon.app.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers or []),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, *rest = head.split("\r\n")
    fields = {}
    for line in rest:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields


async def status(daemon: Daemon, headers: Headers | None = None) -> int:
    return (await handshake(daemon, headers))[0]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def read_audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
