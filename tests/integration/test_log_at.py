"""LOG_METRICS_AT over a real daemon: the client's records stored byte for byte, its order
of checks, the clock rule, the metric fast path, pipelining, no rate limit, no audit, and a
failed write that leaves the file as it was."""

import errno
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fetchml.protocol.enums import ErrorCode, Opcode
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.metrics import MetricRecord, encode_record
from fetchml.protocol.requests import (
    LogMetrics,
    LogMetricsAt,
    MetricPoint,
    Status,
    WatchMetrics,
    decode_request,
    encode_request,
)
from fetchml.server import connection, files
from tests.support.experiments import commit_id, file_records, metrics_path
from tests.support.http import read_audit
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, UNKNOWN_KEY, hash_of
from tests.support.wire import (
    create,
    error_of,
    page_of,
    query_all,
    success_of,
)

HOUR_AGO = int(time.time()) - 3600


def log_at(cid: bytes, rows: list[tuple[int, int, float, str]], key: bytes = ADMIN) -> LogMetricsAt:
    """LOG_METRICS_AT of (timestamp, step, value, name) rows."""
    data = b"".join(encode_record(ts, step, value, name.encode()) for ts, step, value, name in rows)
    return LogMetricsAt(key_hash=key, commit_id=cid, count=len(rows), records=data)


async def test_records_are_stored_byte_for_byte(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await create(client, "verbatim")
    nan = struct.unpack(">d", bytes.fromhex("7ff8000000000123"))[0]
    rows = [
        (HOUR_AGO, 0, 1.0, "loss"),
        (HOUR_AGO - 86400, 7, nan, "wörd"),  # older than the one before: kept as sent
        (HOUR_AGO + 1, 2**32 - 1, -0.0, "n" * 255),
    ]
    request, again = log_at(cid, rows), log_at(cid, rows[:1])
    success_of(await client.call(request), "3")
    success_of(await client.call(again), "1")
    path = metrics_path(daemon.config.storage.base_path, cid)
    assert path.read_bytes() == request.records + again.records
    got = await query_all(client, cid)
    assert [(r.timestamp, r.step, r.name) for r in got] == [
        (ts, step, name) for ts, step, _, name in rows + rows[:1]
    ]


async def test_order_of_checks(daemon: Daemon) -> None:
    """Decode; key; permission; the clock rule; existence; write scope."""
    client = await daemon.client()
    alices = await create(client, "alices", user="alice")
    missing = commit_id("missing")
    ahead = int(time.time()) + 3600
    bad_count = encode_request(log_at(alices, [(HOUR_AGO, 0, 1.0, "x")]))
    bad_count = bad_count[:37] + b"\x00\x00" + bad_count[39:]
    with pytest.raises(MalformedRequest) as decoded:
        decode_request(bad_count[:1] + UNKNOWN_KEY + bad_count[17:])
    error_of(
        await client.call(bad_count[:1] + UNKNOWN_KEY + bad_count[17:]),
        ErrorCode.INVALID_REQUEST,
        decoded.value.message,
    )
    error_of(
        await client.call(log_at(missing, [(ahead, 0, 1.0, "x")], key=UNKNOWN_KEY)),
        ErrorCode.AUTHENTICATION_FAILED,
        "Invalid API key",
    )
    error_of(
        await client.call(log_at(missing, [(ahead, 0, 1.0, "x")], key=hash_of("ana"))),
        ErrorCode.PERMISSION_DENIED,
        "Insufficient permissions",
    )
    error_of(
        await client.call(log_at(missing, [(ahead, 0, 1.0, "x")], key=hash_of("bob"))),
        ErrorCode.INVALID_REQUEST,
        f"timestamp {ahead} is more than 300 s ahead of the server clock",
    )
    error_of(
        await client.call(log_at(missing, [(HOUR_AGO, 0, 1.0, "x")], key=hash_of("bob"))),
        ErrorCode.RESOURCE_NOT_FOUND,
        f"experiment {missing.hex()} not found",
    )
    error_of(
        await client.call(log_at(alices, [(HOUR_AGO, 0, 1.0, "x")], key=hash_of("bob"))),
        ErrorCode.PERMISSION_DENIED,
        "Access denied: not your experiment",
    )
    assert await query_all(client, alices) == []


async def test_the_clock_rule_is_any_record_past_now_plus_300(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await create(client, "clock")
    now = int(time.time())
    # One record too far ahead refuses the whole request, wherever it is.
    for late in (0, 2):
        rows = [(now, 0, 1.0, "a"), (now - 5, 1, 1.0, "b"), (now, 2, 1.0, "c")]
        rows[late] = (now + 400, late, 1.0, "late")
        error_of(await client.call(log_at(cid, rows)), ErrorCode.INVALID_REQUEST)
    assert await query_all(client, cid) == []
    # floor(server clock) + 300 itself is accepted (the daemon's clock is not behind ours).
    success_of(await client.call(log_at(cid, [(now + 300, 0, 1.0, "edge")])), "1")
    assert [r.timestamp for r in await query_all(client, cid)] == [now + 300]


def head(cid: bytes, count: int) -> bytes:
    """A LOG_METRICS_AT message up to its count."""
    return bytes([Opcode.LOG_METRICS_AT]) + ADMIN + cid + struct.pack(">H", count)


def one(timestamp: int = HOUR_AGO, name: bytes = b"x") -> bytes:
    return encode_record(timestamp, 0, 1.0, name)


MALFORMED: dict[str, Callable[[bytes], bytes]] = {
    "count zero": lambda cid: head(cid, 0),
    "count zero with a record": lambda cid: head(cid, 0) + one(),
    "count above records": lambda cid: head(cid, 2) + one(),
    "trailing bytes": lambda cid: head(cid, 1) + one() + b"\x00",
    "timestamp too early": lambda cid: head(cid, 2) + one() + one(946684799),
    "timestamp too late": lambda cid: head(cid, 1) + one(2**32),
    "empty name": lambda cid: head(cid, 2) + one(name=b"") + one(),
    "nul in name": lambda cid: head(cid, 1) + one(name=b"a\x00"),
    "bad utf-8": lambda cid: head(cid, 2) + one() + one(name=b"\xff"),
    "cut": lambda cid: head(cid, 1) + one(name=b"xyz")[:-1],
    "no count": lambda cid: head(cid, 1)[:-1],
}


async def test_a_malformed_request_gets_the_decoders_exact_error(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Valid requests never reach decode_request (the fast path takes them apart); every
    malformed one does, and gets its exact message; nothing is written."""
    decoded: list[int] = []

    def counting(message: bytes) -> object:
        decoded.append(message[0])
        return decode_request(message)

    monkeypatch.setattr(connection, "decode_request", counting)
    client = await daemon.client()
    cid = await create(client, "malformed")
    decoded.clear()
    for name, build in MALFORMED.items():
        wire = build(cid)
        assert wire[0] == Opcode.LOG_METRICS_AT, name
        with pytest.raises(MalformedRequest) as expected:
            decode_request(wire)
        error_of(await client.call(wire), ErrorCode.INVALID_REQUEST, expected.value.message)
    assert decoded == [Opcode.LOG_METRICS_AT] * len(MALFORMED)
    assert await query_all(client, cid) == []

    decoded.clear()
    for step in range(3):
        success_of(await client.call(log_at(cid, [(HOUR_AGO, step, 1.0, "ok")])), "1")
    assert decoded == []
    assert [r.step for r in await query_all(client, cid)] == [0, 1, 2]


async def test_pipelined_with_log_metrics_in_request_order(daemon: Daemon) -> None:
    client = await daemon.client()
    cid = await create(client, "pipelined")
    sent: list[LogMetrics | LogMetricsAt] = []
    for i in range(60):
        if i % 3:
            sent.append(log_at(cid, [(HOUR_AGO + i, i, 0.5, "at"), (HOUR_AGO, i, 0.25, "at")]))
        else:
            points = (MetricPoint(i, 1.0, "plain"),)
            sent.append(LogMetrics(key_hash=ADMIN, commit_id=cid, metrics=points))
    for request in sent:
        await client.send(request)
    for request in sent:
        success_of(await client.recv(), str(request.count))
    got = await query_all(client, cid)
    assert [(r.name, r.step) for r in got] == [
        (name, i) for i in range(60) for name in (["at", "at"] if i % 3 else ["plain"])
    ]
    assert [r.timestamp for r in got if r.name == "at"][:4] == [
        HOUR_AGO + 1,
        HOUR_AGO,
        HOUR_AGO + 2,
        HOUR_AGO,
    ]


async def test_watchers_get_the_clients_timestamps(daemon: Daemon) -> None:
    client, watcher = await daemon.client(), await daemon.client()
    cid = await create(client, "watched")
    success_of(await watcher.call(WatchMetrics(key_hash=ADMIN, commit_id=cid)), "")
    success_of(await client.call(log_at(cid, [(HOUR_AGO, 3, 0.5, "loss")])), "1")
    page = page_of(await watcher.recv())
    assert (page.next, page.records) == (1, [MetricRecord(HOUR_AGO, 3, 0.5, "loss")])


async def test_never_rate_limited_never_audited(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = await start_daemon(rate_limit={"control_requests_per_minute": 1})
    client = await daemon.client()
    cid = await create(client, "unlimited")  # the one control request of the minute
    error_of(await client.call(Status(key_hash=ADMIN)), ErrorCode.SERVER_OVERLOADED)
    for step in range(30):
        success_of(await client.call(log_at(cid, [(HOUR_AGO, step, 1.0, "x")])), "1")
    path = metrics_path(daemon.config.storage.base_path, cid)
    assert [r.step for r in file_records(path)] == list(range(30))
    events = [entry["event"] for entry in read_audit(tmp_path / "audit.jsonl")]
    assert events == ["create_experiment"]


class FullDisk:
    """ENOSPC from the store's writes while `full`, after writing half of the data."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self._write_all = files.write_all
        monkeypatch.setattr(files, "write_all", self.write_all)

    def write_all(self, fd: int, data: bytes) -> None:
        if not self.full:
            return self._write_all(fd, data)
        self._write_all(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_failed_write_leaves_the_file_as_it_was(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FullDisk(monkeypatch)
    client = await daemon.client()
    cid = await create(client, "full")
    success_of(await client.call(log_at(cid, [(HOUR_AGO, 0, 1.0, "loss")])), "1")
    path = metrics_path(daemon.config.storage.base_path, cid)
    before = path.read_bytes()

    disk.full = True
    rows = [(HOUR_AGO + i, i, 1.0, "x" * 200) for i in range(1, 41)]
    error_of(await client.call(log_at(cid, rows)), ErrorCode.DISK_FULL, "disk full")
    assert path.read_bytes() == before

    disk.full = False
    success_of(await client.call(log_at(cid, rows)), "40")
    assert [r.step for r in await query_all(client, cid)] == list(range(41))
