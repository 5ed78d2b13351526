"""kill -9 at random moments while several clients ingest, then restart on the same data dir.

Each cycle: start the daemon, make its first append (a "probe" metric, which runs the
torn-tail recovery), check the file, let three clients pipeline LOG_METRIC and
LOG_METRICS, and SIGKILL the daemon once a random number of records has been
acknowledged. A client's records carry its name and steps counting up over the whole
run, so every record says who sent it, and in what order.

After each restart, before its first append, QUERY_METRICS serves the valid prefix and
nothing of what the kill left after it. Then: every acknowledged record is in metrics.bin
exactly once; each client's records of the cycle are a prefix of what it sent (its send
order, nothing it did not send, at least everything acknowledged); nothing before the
previous check changed; the daemon cut exactly the unparseable remainder the kill left
(kept a copy of it, and logged it); the file parses to its end; meta.bin is
byte-identical. Every tenth cycle, fsck finds nothing wrong; after the last one, the real
`fsck` too.

A SIGKILL almost never lands inside the kernel's copy of a write, so some cycles also
append what a torn write leaves (part of a record, zero-filled blocks) after the kill,
and some start and kill a daemon that appends nothing (it must not touch the file).
Each restart runs with `durability: write` or `fsync`, at random.

50 cycles by default; FETCHML_LONG=1 runs 500. FETCHML_SEED picks the random choices.
"""

import asyncio
import contextlib
import io
import os
import random
import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from fetchml.protocol.metrics import decode_records, scan
from fetchml.protocol.requests import (
    CreateExperiment,
    LogMetric,
    LogMetrics,
    MetricPoint,
    Request,
    encode_request,
)
from fetchml.protocol.responses import Success, decode_response
from fetchml.server.tools import fsck
from tests.support.config import raw_config, write_config
from tests.support.daemon import DaemonProcess, daemons, run_cli
from tests.support.experiments import record, torn_copies
from tests.support.keys import ADMIN
from tests.support.wire import query_all

LONG = os.environ.get("FETCHML_LONG") == "1"
CYCLES = 500 if LONG else 50
CYCLES_PER_EXPERIMENT = 25
"""A fresh experiment now and then keeps each file (and its scans) small."""
CLIENTS = 3
WINDOW = 16
"""Unanswered requests per client."""
MAX_TARGET = 3000
"""The kill comes once up to this many records are acknowledged in the cycle."""
FSCK_EVERY = 10
INJECT_TAIL = 0.3
"""Share of the kills followed by a torn-write tail appended by the test."""
KILL_IDLE = 0.1
"""This share of the kills also starts and kills a daemon that appends nothing."""
SEED = int(os.environ.get("FETCHML_SEED", "9103"))
PROBE = "probe"


@dataclass
class Ingester:
    """One connection pipelining metrics named after it, steps counting up forever."""

    name: str
    rng: random.Random
    step: int = 0
    sent: list[int] = field(default_factory=list)
    """Steps sent in this cycle, in send order."""
    acked: int = 0
    """Records acknowledged in this cycle; responses come in order, so a prefix of `sent`."""

    def request(self, commit: bytes) -> tuple[Request, list[int], str]:
        """The next request, its steps and the SUCCESS message it must get."""
        roll = self.rng.random()
        if roll < 0.5:
            steps = [self.step]
            req: Request = LogMetric(
                key_hash=ADMIN, commit_id=commit, step=self.step, value=0.5, name=self.name
            )
            message = ""
        else:
            count = self.rng.randint(1000, 6000) if roll > 0.98 else self.rng.randint(1, 40)
            steps = list(range(self.step, self.step + count))
            points = tuple(MetricPoint(step, float(step), self.name) for step in steps)
            req = LogMetrics(key_hash=ADMIN, commit_id=commit, metrics=points)
            message = str(count)
        self.step += len(steps)
        return req, steps, message

    async def run(self, url: str, commit: bytes) -> None:
        """Ingest until the connection dies; any response but the right SUCCESS fails."""
        self.sent, self.acked = [], 0
        try:
            ws = await connect(url, compression=None, max_size=None, open_timeout=30)
        except (OSError, WebSocketException):
            return  # killed before the handshake finished
        slots = asyncio.Semaphore(WINDOW)
        unanswered: deque[tuple[int, str]] = deque()

        async def send_forever() -> None:
            while True:
                await slots.acquire()
                req, steps, message = self.request(commit)
                unanswered.append((len(steps), message))
                self.sent += steps
                await ws.send(encode_request(req))

        sender = asyncio.create_task(send_forever())
        try:
            await self._receive(ws, unanswered, slots)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender

    async def _receive(
        self,
        ws: ClientConnection,
        unanswered: deque[tuple[int, str]],
        slots: asyncio.Semaphore,
    ) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                data = await ws.recv()
                assert isinstance(data, bytes)
                response = decode_response(data)
                count, message = unanswered.popleft()
                assert isinstance(response, Success), f"{self.name}: {response}"
                assert response.message == message, f"{self.name}: {response}"
                self.acked += count
                slots.release()


@dataclass
class Experiment:
    """What the test knows of the experiment being written."""

    commit: bytes
    path: Path
    meta: bytes = b""
    verified: bytes = b""
    """The whole file as of the last check: later checks find it unchanged at the start."""
    injected: bytes = b""
    """What the test appended after the last kill, as a crash mid-write could leave it."""
    records: int = 0
    """Records in `verified`."""


@dataclass
class Totals:
    acked: int = 0
    unacked_survivors: int = 0
    real_tails: int = 0
    injected_tails: int = 0
    untouched: int = 0


def check_restart(
    exp: Experiment,
    ingesters: list[Ingester],
    before: bytes,
    copies_before: list[Path],
    cycle: int,
    totals: Totals,
) -> None:
    """After the probe, the first append of this daemon: see the module docstring."""
    data = exp.path.read_bytes()
    old = len(exp.verified)
    assert before[:old] == exp.verified, "bytes before the last check changed"
    end = scan(before, old).end
    tail = before[end:]

    # The recovery cut exactly the remainder, kept a copy, and the probe came after.
    assert data[:end] == before[:end], "the daemon changed the valid prefix"
    assert scan(data, end).end == len(data), "the file does not parse to its end"
    probe = decode_records(data[end:])
    assert [(r.name, r.step) for r in probe] == [(PROBE, cycle)]
    new_copies = sorted(set(torn_copies(exp.path)) - set(copies_before))
    assert [c.read_bytes() for c in new_copies] == ([tail] if tail else [])
    assert tail.endswith(exp.injected)
    totals.real_tails += len(tail) > len(exp.injected)
    totals.injected_tails += bool(exp.injected)
    exp.injected = b""

    # The previous cycle's records: per client, a prefix of what it sent, >= the acked part.
    survivors = decode_records(before[old:end])
    names = {i.name for i in ingesters}
    assert {r.name for r in survivors} <= names, "records nobody sent"
    for ingester in ingesters:
        steps = [r.step for r in survivors if r.name == ingester.name]
        assert steps == ingester.sent[: len(steps)], f"{ingester.name}: not its send order"
        assert len(steps) >= ingester.acked, (
            f"{ingester.name}: {ingester.acked} records acknowledged, {len(steps)} in the file"
        )
        totals.acked += ingester.acked
        totals.unacked_survivors += len(steps) - ingester.acked
    assert (exp.path.parent / "meta.bin").read_bytes() == exp.meta, "meta.bin changed"
    exp.verified = data
    exp.records += len(survivors) + len(probe)


def tear(exp: Experiment, ingester: Ingester, rng: random.Random) -> None:
    """Append what a crash in the middle of a write can leave: part of the next record,
    alone, followed by zeros up to a block boundary, or zero-filled blocks."""
    whole = record(ingester.step, ingester.name)
    part = whole[: rng.randrange(1, len(whole))]
    exp.injected = rng.choice([part, part + bytes(4096 - len(part)), bytes(4096)])
    with exp.path.open("ab") as f:
        f.write(exp.injected)


def check_fsck(base: Path) -> None:
    out = io.StringIO()
    code = fsck(base, repair=False, out=out)
    assert code == 0, out.getvalue()


async def kill_while_ingesting(
    daemon: DaemonProcess, ingesters: list[Ingester], commit: bytes, target: int
) -> None:
    """Run the clients; SIGKILL once `target` records are acknowledged (or all died)."""
    tasks = [asyncio.create_task(i.run(daemon.url, commit)) for i in ingesters]
    try:
        await asyncio.sleep(0)  # let the clients start connecting
        deadline = asyncio.get_running_loop().time() + 30
        while sum(i.acked for i in ingesters) < target and not all(t.done() for t in tasks):
            assert asyncio.get_running_loop().time() < deadline, "ingest stalled"
            await asyncio.sleep(0.001)
        assert daemon.kill() == -signal.SIGKILL
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def restart_and_check(
    daemon: DaemonProcess,
    exp: Experiment,
    ingesters: list[Ingester],
    cycle: int,
    totals: Totals,
) -> None:
    """The daemon's first append to `exp` (a probe record), then `check_restart`."""
    before = exp.path.read_bytes() if exp.path.exists() else b""
    copies_before = torn_copies(exp.path)
    client = await daemon.client()
    # Before the first append, readers see the valid prefix and nothing of the remainder.
    end = scan(before, len(exp.verified)).end
    unchecked = await query_all(client, exp.commit, after=exp.records)
    assert unchecked == decode_records(before[len(exp.verified) : end])
    probe = await client.call(
        LogMetric(key_hash=ADMIN, commit_id=exp.commit, step=cycle, value=0.0, name=PROBE)
    )
    assert isinstance(probe, Success), (probe, daemon.log())
    check_restart(exp, ingesters, before, copies_before, cycle, totals)
    if end < len(before):  # the probe cut a torn tail
        assert "recovered" in daemon.log(), daemon.log()
    for ingester in ingesters:  # checked: the next cycle starts afresh
        ingester.sent, ingester.acked = [], 0
    await client.ws.close()


async def new_experiment(daemon: DaemonProcess, base: Path, number: int) -> Experiment:
    commit = number.to_bytes(20, "big")
    client = await daemon.client()
    created = await client.call(
        CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="kill9")
    )
    assert isinstance(created, Success), created
    await client.ws.close()
    exp = Experiment(commit, base / commit.hex() / "metrics.bin")
    exp.meta = (exp.path.parent / "meta.bin").read_bytes()
    return exp


@pytest.mark.timeout(3600 if LONG else 120)
async def test_kill9_loop_keeps_every_acknowledged_metric(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\nkill -9 loop: {CYCLES} cycles, seed {SEED} (FETCHML_SEED)")
    base = tmp_path / "experiments"
    configs = [  # both durability modes survive kill -9; the daemon alternates at random
        write_config(tmp_path / f"{mode}.yaml", raw_config(tmp_path, storage={"durability": mode}))
        for mode in ("write", "fsync")
    ]
    ingesters = [Ingester(f"client{n}", random.Random(rng.random())) for n in range(CLIENTS)]
    totals = Totals()
    exp: Experiment | None = None

    with daemons(tmp_path) as start:
        for cycle in range(CYCLES):
            daemon = await start(rng.choice(configs)).wait_ready()
            if exp is not None:
                await restart_and_check(daemon, exp, ingesters, cycle, totals)
            if cycle % CYCLES_PER_EXPERIMENT == 0:
                exp = await new_experiment(daemon, base, cycle // CYCLES_PER_EXPERIMENT + 1)
                await restart_and_check(daemon, exp, ingesters, cycle, totals)
            assert exp is not None
            if cycle % FSCK_EVERY == 0:
                check_fsck(base)
            target = rng.choice([0, rng.randint(1, 100), rng.randint(1, MAX_TARGET)])
            await kill_while_ingesting(daemon, ingesters, exp.commit, target)
            if rng.random() < INJECT_TAIL:
                tear(exp, rng.choice(ingesters), rng)
            if rng.random() < KILL_IDLE:  # a daemon that never appends leaves the file alone
                untouched = exp.path.read_bytes()
                (await start(configs[0]).wait_ready()).kill()
                assert exp.path.read_bytes() == untouched
                totals.untouched += 1

        # One more restart for the last kill, then a clean stop and the real fsck.
        daemon = await start(configs[0]).wait_ready()
        assert exp is not None
        await restart_and_check(daemon, exp, ingesters, CYCLES, totals)
        await daemon.shutdown()

    result = run_cli("fsck", "--base-path", str(base))
    assert result.returncode == 0, result.stdout + result.stderr
    print(
        f"{totals.acked} acknowledged records, all found; {totals.unacked_survivors} "
        f"unacknowledged records survived; torn tails cut and kept: {totals.real_tails} "
        f"left by kills, {totals.injected_tails} injected; {totals.untouched} idle restarts"
    )
    assert totals.acked > 0
