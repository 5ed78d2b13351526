"""Transport (PROTOCOL.md section 2): handshake auth, whitelist, HTTP endpoints, close
codes, connection limits; and that keys never reach logs, the audit file or /metrics."""

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from fetchml import __version__
from fetchml.client.metrics import log_metric_request
from fetchml.frames import binary_frame
from fetchml.protocol.enums import ErrorCode, JobStatus, PruneType
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    GetExperiment,
    ListExperiments,
    Prune,
    Status,
    UpdateJob,
    WatchMetrics,
    WhoAmI,
)
from fetchml.protocol.responses import Success, decode_response
from tests.support.daemon import poll
from tests.support.experiments import commit_id, write_experiment
from tests.support.http import http_get, read_audit, samples
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN, KEYS, UNKNOWN_KEY, hash_of, key_hash
from tests.support.wire import (
    RawClient,
    closed_with,
    create,
    data_of,
    error_of,
    log,
    page_of,
    queue,
    success_of,
)

WRONG_KEY = "fml_wrong_key_not_configured"


async def refused(daemon: Daemon, path: str = "/ws", **kwargs: Any) -> int:
    """The HTTP status of a WebSocket handshake that must not upgrade."""
    url = f"ws://127.0.0.1:{daemon.app.port}{path}"
    with pytest.raises(InvalidStatus) as info:
        await connect(url, compression=None, **kwargs)
    return info.value.response.status_code


def raw_key(user: str) -> str:
    return KEYS[user][1]


def secrets() -> list[str]:
    """Every configured key, and the wrong one, in every form a leak could take."""
    out = []
    for key in [*(raw_key(user) for user in KEYS), WRONG_KEY]:
        digest = hashlib.sha256(key.encode()).digest()
        spaced = " ".join(f"{b:02x}" for b in digest[:8])  # as in a hex dump of a frame
        out += [key, digest.hex(), digest[:16].hex(), repr(digest[:16]), repr(digest), spaced]
    return out


def leaks(text: str) -> list[str]:
    """The lines of `text` holding a key or a key hash."""
    found = secrets()
    return [line for line in text.splitlines() if any(secret in line for secret in found)]


# -- handshake authentication ---------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": WRONG_KEY}, {"Authorization": f"Bearer {WRONG_KEY}"}],
    ids=["x-api-key", "bearer"],
)
async def test_wrong_handshake_key_is_401_without_upgrade(
    daemon: Daemon, headers: dict[str, str]
) -> None:
    assert await refused(daemon, additional_headers=headers) == 401
    metrics = samples((await http_get(daemon, "/metrics")).body.decode())
    assert metrics[("fetchml_auth_failures_total", frozenset())] == 1.0
    assert metrics[("fetchml_connections_total", frozenset())] == 0.0


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": raw_key("alice")}, {"Authorization": f"Bearer {raw_key('alice')}"}],
    ids=["x-api-key", "bearer"],
)
async def test_handshake_key_binds_the_connection(daemon: Daemon, headers: dict[str, str]) -> None:
    client = await daemon.client(additional_headers=headers)
    assert (
        data_of(await client.call(WhoAmI(key_hash=hash_of("alice"))), "whoami")["user"] == "alice"
    )
    for other in (hash_of("bob"), ADMIN, UNKNOWN_KEY):
        error_of(
            await client.call(WhoAmI(key_hash=other)),
            ErrorCode.AUTHENTICATION_FAILED,
            "Invalid API key",
        )
    # The errors left the connection open.
    data_of(await client.call(ListExperiments(key_hash=hash_of("alice"))), "experiments")


async def test_no_handshake_key_allows_any_valid_request_key(daemon: Daemon) -> None:
    client = await daemon.client()
    for user in KEYS:
        assert data_of(await client.call(WhoAmI(key_hash=hash_of(user))), "whoami")["user"] == user


# -- ip whitelist --------------------------------------------------------------------------


async def test_peer_outside_the_whitelist_gets_403(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(auth={"ip_whitelist": ["10.0.0.0/8", "192.168.0.0/16"]})
    assert await refused(daemon) == 403
    assert await refused(daemon, additional_headers={"X-API-Key": raw_key("admin")}) == 403
    for path in ("/health", "/metrics", "/ws", "/elsewhere"):
        response = await http_get(daemon, path)
        assert response.status == 403, path


async def test_peer_inside_the_whitelist_is_served(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(auth={"ip_whitelist": ["127.0.0.0/8"]})
    client = await daemon.client()
    data_of(await client.call(WhoAmI(key_hash=ADMIN)), "whoami")
    assert (await http_get(daemon, "/health")).status == 200
    assert (await http_get(daemon, "/metrics")).status == 200


# -- HTTP endpoints ----------------------------------------------------------------------------


async def test_health(start_daemon: DaemonFactory, tmp_path: Path) -> None:
    for label in ("one", "two"):
        write_experiment(tmp_path / "experiments", commit_id(label), timestamp=1_700_000_000)
    daemon = await start_daemon()
    response = await http_get(daemon, "/health")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    health = json.loads(response.body)
    assert health["status"] == "ok"
    assert health["version"] == __version__
    assert isinstance(health["uptime_s"], int | float) and health["uptime_s"] >= 0
    assert health["experiments"] == 2
    assert json.loads((await http_get(daemon, "/health?verbose=1")).body)["experiments"] == 2


async def test_prometheus_metrics(daemon: Daemon) -> None:
    writer = await daemon.client()
    cid = await create(writer, "prom")
    await log(writer, cid, [(0, 1.0, "loss"), (0, 0.5, "acc"), (1, 0.9, "loss")])
    await writer.call(Status(key_hash=ADMIN))
    await writer.call(Status(key_hash=ADMIN))
    error_of(await writer.call(Status(key_hash=UNKNOWN_KEY)), ErrorCode.AUTHENTICATION_FAILED)
    watcher = await daemon.client()
    success_of(await watcher.call(WatchMetrics(key_hash=ADMIN, commit_id=cid)), "")
    assert page_of(await watcher.recv()).next == 3  # the backfill: the watch is running

    response = await http_get(daemon, "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = samples(response.body.decode())

    def value(name: str, **labels: str) -> float:
        return metrics[(name, frozenset(labels.items()))]

    assert value("fetchml_requests_total", opcode="STATUS") == 3.0
    assert value("fetchml_requests_total", opcode="CREATE_EXPERIMENT") == 1.0
    assert value("fetchml_requests_total", opcode="LOG_METRICS") == 1.0
    assert value("fetchml_requests_total", opcode="WATCH_METRICS") == 1.0
    assert value("fetchml_metrics_appended_total") == 3.0
    assert value("fetchml_auth_failures_total") == 1.0
    assert value("fetchml_connections_open") == 2.0
    assert value("fetchml_watchers") == 1.0
    assert value("fetchml_flush_records_count") == 1.0
    assert value("fetchml_flush_records_sum") == 3.0
    assert value("fetchml_flush_records_bucket", le="1.0") == 0.0
    assert value("fetchml_flush_records_bucket", le="10.0") == 1.0
    assert value("fetchml_flush_seconds_count") == 1.0
    assert value("fetchml_flush_seconds_bucket", le="+Inf") == 1.0


# "/" serves the dashboard (tests/web/test_routes.py).
@pytest.mark.parametrize("path", ["/index.html", "/ws/extra", "/wss", "/healthz", "/metrics/x"])
async def test_other_paths_are_404(daemon: Daemon, path: str) -> None:
    assert (await http_get(daemon, path)).status == 404
    assert await refused(daemon, path) == 404


@pytest.mark.parametrize("enabled", [False, True], ids=["default", "configured"])
async def test_compression_only_when_configured(start_daemon: DaemonFactory, enabled: bool) -> None:
    daemon = await start_daemon(server={"compression": enabled})
    async with connect(daemon.url, compression="deflate") as ws:
        assert ws.response is not None
        negotiated = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ("permessage-deflate" in negotiated) == enabled
        data_of(await RawClient(ws).call(WhoAmI(key_hash=ADMIN)), "whoami")


# -- frames and limits ---------------------------------------------------------------------------


async def test_text_frame_closes_with_1003(daemon: Daemon) -> None:
    client = await daemon.client()
    await client.ws.send("WHOAMI")
    assert await closed_with(client) == 1003


async def test_oversized_message_closes_with_1009(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"max_message_bytes": 131072})  # the lowest allowed
    client = await daemon.client()
    # Exactly the limit is read (and refused as a request with trailing bytes).
    at_limit = bytes([0x13]) + ADMIN + b"\0" * (131072 - 17)
    error_of(await client.call(at_limit), ErrorCode.INVALID_REQUEST)
    await client.send(at_limit + b"\0")
    assert await closed_with(client) == 1009


async def test_max_connections_answers_503(start_daemon: DaemonFactory) -> None:
    daemon = await start_daemon(server={"max_connections": 2})
    first, second = await daemon.client(), await daemon.client()
    for client in (first, second):  # both handlers are running
        data_of(await client.call(WhoAmI(key_hash=ADMIN)), "whoami")
    assert await refused(daemon) == 503
    assert (await http_get(daemon, "/health")).status == 200
    data_of(await first.call(WhoAmI(key_hash=ADMIN)), "whoami")


# -- secrets stay out of logs, the audit file and /metrics ----------------------------------------


async def test_keys_and_hashes_never_logged(
    start_daemon: DaemonFactory, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websockets")
    daemon = await start_daemon()

    bound = await daemon.client(additional_headers={"X-API-Key": raw_key("alice")})
    data_of(await bound.call(WhoAmI(key_hash=hash_of("alice"))), "whoami")
    error_of(await bound.call(WhoAmI(key_hash=hash_of("bob"))), ErrorCode.AUTHENTICATION_FAILED)
    bearer = await daemon.client(additional_headers={"Authorization": f"Bearer {raw_key('bob')}"})
    await create(bearer, "secret-test", user="bob")
    assert await refused(daemon, additional_headers={"X-API-Key": WRONG_KEY}) == 401
    assert await refused(daemon, additional_headers={"Authorization": f"Bearer {WRONG_KEY}"}) == 401
    plain = await daemon.client()
    error_of(
        await plain.call(Status(key_hash=key_hash(WRONG_KEY))), ErrorCode.AUTHENTICATION_FAILED
    )
    for user in KEYS:
        await plain.call(Status(key_hash=hash_of(user)))
    for client in (bound, bearer, plain):
        await client.ws.close()

    # Our own client logs the headers it sends; everything else is the daemon's.
    server_side = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert any(r.name.startswith("websockets.server") for r in server_side), "debug logging is on"
    logged = "\n".join(f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in server_side)
    leaked = leaks(logged)
    assert not leaked, "\n".join(leaked)
    assert leaks((tmp_path / "audit.jsonl").read_text()) == []
    assert leaks((await http_get(daemon, "/metrics")).body.decode()) == []


async def test_audit_has_one_line_per_mutation_and_auth_failure(
    daemon: Daemon, tmp_path: Path
) -> None:
    client = await daemon.client()
    alice = hash_of("alice")
    cid = await create(client, "audited", user="alice", job="a")
    first = await queue(client, "alice", cid, "first")
    await queue(client, "alice", cid, "second")
    success_of(await client.call(CancelJob(key_hash=alice, job_name="second")))
    claimed = data_of(await client.call(ClaimJob(key_hash=hash_of("wendy"), worker_id="w1")), "job")
    update = UpdateJob(key_hash=hash_of("wendy"), job_id=first["id"], status=JobStatus.COMPLETED)
    success_of(await client.call(update))
    prune = Prune(key_hash=ADMIN, prune_type=PruneType.KEEP_NEWEST, value=100)
    data_of(await client.call(prune), "pruned")
    error_of(await client.call(WhoAmI(key_hash=UNKNOWN_KEY)), ErrorCode.AUTHENTICATION_FAILED)
    # Reads are not audited.
    await client.call(Status(key_hash=alice))
    await client.call(ListExperiments(key_hash=alice))
    await client.call(GetExperiment(key_hash=alice, commit_id=cid))
    await client.call(WhoAmI(key_hash=alice))

    entries = read_audit(tmp_path / "audit.jsonl")
    assert [(e["event"], e["user"]) for e in entries] == [
        ("create_experiment", "alice"),
        ("queue_job", "alice"),
        ("queue_job", "alice"),
        ("cancel_job", "alice"),
        ("claim_job", "wendy"),
        ("update_job", "wendy"),
        ("prune", "admin"),
        ("auth_failure", None),
    ]
    assert all(isinstance(e["ts"], int | float) for e in entries)
    assert entries[0]["commit"] == cid.hex()
    assert entries[1]["job_id"] == first["id"]
    assert entries[4]["job_id"] == claimed["id"] == first["id"]
    assert entries[5]["job_id"] == first["id"]


async def test_audit_counts_auth_failures_per_address_not_per_attempt(
    daemon: Daemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fetchml.server")
    assert await refused(daemon, additional_headers={"X-API-Key": WRONG_KEY}) == 401
    assert await refused(daemon, additional_headers={"Authorization": f"Bearer {WRONG_KEY}"}) == 401
    plain = await daemon.client(additional_headers={"X-API-Key": raw_key("alice")})
    for _ in range(30):  # on a connection with a valid key: answered, reported, not throttled
        error_of(await plain.call(WhoAmI(key_hash=UNKNOWN_KEY)), ErrorCode.AUTHENTICATION_FAILED)
    audit = tmp_path / "audit.jsonl"
    # The first failure is reported at once; the rest wait for the end of the minute.
    assert [(e["event"], e["user"], e["count"]) for e in read_audit(audit)] == [
        ("auth_failure", None, 1)
    ]
    await plain.ws.close()
    daemon.app.stop_requested.set()  # stopping reports what is pending
    await poll(lambda: len(read_audit(audit)) == 2, "the pending report")
    entries = read_audit(audit)
    assert [e["peer"] for e in entries] == ["127.0.0.1"] * 2
    assert sum(e["count"] for e in entries) == 32
    assert entries[1]["reason"] == "request key differs from the handshake key"
    assert leaks(audit.read_text()) == []
    reports = [r for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(reports) == 2, [r.getMessage() for r in reports]


async def test_compressed_connections_get_compressed_answers(start_daemon: DaemonFactory) -> None:
    """With server.compression on, a client that offers permessage-deflate gets its answers
    compressed by websockets (the daemon frames them itself only without an extension),
    and one that does not gets them plain."""
    daemon = await start_daemon(server={"compression": True})
    for offered in ("deflate", None):
        ws = await connect(daemon.url, compression=offered, max_size=None)
        assert bool(ws.protocol.extensions) == (offered is not None)
        client = RawClient(ws)
        cid = await create(client, f"compressed-{offered}")
        await log(client, cid, [(i, 0.5, "loss") for i in range(1000)])
        await ws.close()


async def test_frames_are_read_wherever_a_read_cuts_them(start_daemon: DaemonFactory) -> None:
    """A request written with the handshake, one written a byte at a time, and a ping
    between two requests written together: each request is answered, in order, and the
    ping as soon as it is read."""
    daemon = await start_daemon()
    client = await daemon.client()
    cid = await create(client, "cut-frames")
    await client.ws.close()
    request = log_metric_request(hash_of("admin"), cid, "loss", 1.0)
    protocol = ClientProtocol(parse_uri(daemon.url))
    protocol.send_request(protocol.connect())
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.app.port)
    writer.write(b"".join(protocol.data_to_send()) + binary_frame(request))
    for byte in binary_frame(request):
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.001)
    pinging = ClientProtocol(parse_uri(daemon.url), state=State.OPEN)
    pinging.send_ping(b"between")
    writer.write(binary_frame(request) + b"".join(pinging.data_to_send()) + binary_frame(request))
    events: list[Any] = []
    async with asyncio.timeout(10):
        while len([e for e in events if isinstance(e, Frame)]) < 5:
            protocol.receive_data(await reader.read(65536))
            events += protocol.events_received()
    writer.close()
    frames = [(e.opcode, bytes(e.data)) for e in events if isinstance(e, Frame)]
    ack = (Opcode.BINARY, frames[0][1])
    assert frames == [ack, ack, (Opcode.PONG, b"between"), ack, ack]  # a ping, answered at once
    success = decode_response(ack[1])
    assert isinstance(success, Success) and success.message == ""
