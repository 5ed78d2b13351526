"""A bad-key flood beside an honest client: the flooder, a separate process on the same
address, is throttled, closed and refused; the honest client's LOG_METRIC acks stay fast and
no file grows by more than 1 MB.

Run as a module, this file is the flooder: `python -m tests.reliability.test_flood URL FRAMES
SECONDS` prints what it managed to send as JSON.
"""

import asyncio
import base64
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fetchml.protocol.requests import CreateExperiment, LogMetric, encode_request
from fetchml.protocol.responses import Success
from tests.support.config import raw_config, write_config
from tests.support.daemon import ROOT, daemons
from tests.support.keys import ADMIN, KEYS, key_hash
from tests.support.wire import RawClient

LONG = os.environ.get("FETCHML_LONG") == "1"
FRAMES = 200_000
SECONDS = 60.0 if LONG else 4.0
"""The flood sends at most FRAMES bad-key frames and lasts SECONDS."""
COMMIT = bytes.fromhex("f1" * 20)
MB = 1 << 20


async def flood(url: str, frames: int, seconds: float) -> dict[str, object]:
    """Bad-key LOG_METRIC frames, two ways at once for `seconds`: a firehose that writes up
    to `frames` of them on one connection without ever reading, and a client that sends them
    in bursts, notices the close and reconnects at once, refused or not."""
    frame = encode_request(
        LogMetric(key_hash=key_hash("fml_flood"), commit_id=COMMIT, step=0, value=1.0, name="x")
    )
    deadline = time.monotonic() + seconds
    counts: collections.Counter[str] = collections.Counter()

    async def firehose() -> None:
        """Masked frames written straight to the socket: it never reads, so it never
        learns that the daemon closed the connection (until the socket fails)."""
        host, port = url.removeprefix("ws://").removesuffix("/ws").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        masked = bytes([0x82, 0x80 | len(frame)]) + bytes(4) + frame  # mask key 0
        chunk = masked * 1000
        try:
            while counts["firehose frames"] < frames and time.monotonic() < deadline:
                writer.write(chunk)
                await writer.drain()
                counts["firehose frames"] += 1000
        except OSError as exc:
            counts[f"firehose {type(exc).__name__}"] += 1
        writer.close()

    async def reconnecting() -> None:
        while time.monotonic() < deadline:
            try:
                async with connect(url, compression=None, close_timeout=1) as ws:
                    counts["connections"] += 1
                    while time.monotonic() < deadline:
                        for _ in range(100):
                            await ws.send(frame)
                            counts["frames"] += 1
                        await asyncio.sleep(0)  # lets the close be noticed
            except InvalidStatus as exc:
                counts[f"refused {exc.response.status_code}"] += 1
            except ConnectionClosed as exc:
                counts[f"closed {exc.rcvd.code if exc.rcvd else None}"] += 1
            except OSError as exc:
                counts[type(exc).__name__] += 1

    await asyncio.gather(firehose(), reconnecting())
    return dict(counts)


def sizes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


async def honest(client: RawClient, flooder: subprocess.Popen[bytes]) -> list[float]:
    """LOG_METRIC one at a time while the flood lasts: each ack's latency in seconds."""
    latencies = []
    step = 0
    while flooder.poll() is None:
        started = time.perf_counter()
        response = await client.call(
            LogMetric(key_hash=ADMIN, commit_id=COMMIT, step=step, value=0.5, name="loss")
        )
        latencies.append(time.perf_counter() - started)
        assert isinstance(response, Success), response
        step += 1
    return latencies


async def test_a_bad_key_flood_neither_grows_files_nor_slows_an_honest_client(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "config.yaml", raw_config(tmp_path))
    with daemons(tmp_path) as start:
        daemon = await start(config, measured=False).wait_ready()
        client = await daemon.client(additional_headers={"X-API-Key": KEYS["admin"][1]})
        created = await client.call(
            CreateExperiment(key_hash=ADMIN, commit_id=COMMIT, job_name="j")
        )
        assert isinstance(created, Success), created
        before = sizes(tmp_path)
        argv = [daemon.url, str(FRAMES), str(SECONDS)]
        flooder = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.test_flood", *argv],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
        )
        try:
            latencies = await honest(client, flooder)
            out, _ = flooder.communicate(timeout=60)
        finally:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait()
        assert flooder.returncode == 0
        flooded = json.loads(out)
        after = sizes(tmp_path)
        log_lines = daemon.log().count("\n")
        await client.ws.close()
        await daemon.shutdown()

    growth = {name: size - before.get(name, 0) for name, size in after.items()}
    q = statistics.quantiles(latencies, n=100)
    print(
        f"\nflood for {SECONDS:.0f} s: {flooded}; honest client: {len(latencies)} LOG_METRIC "
        f"acks, p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms; daemon log "
        f"{log_lines} lines; growth (bytes): {growth}"
    )
    honest_data = f"experiments/{COMMIT.hex()}/metrics.bin"
    assert {name: g for name, g in growth.items() if name != honest_data and g > MB} == {}
    assert log_lines < 100
    assert q[98] < 0.2  # ten times the 20 ms target of scripts/bench


if __name__ == "__main__":
    url, frames, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(asyncio.run(flood(url, frames, seconds))))
