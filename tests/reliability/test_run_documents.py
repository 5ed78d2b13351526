"""run.json across kill -9: a daemon in a subprocess takes pipelined UPDATE_RUNs from two
connections and is killed with SIGKILL at a random moment, several times. After each
restart run.json is a whole document that holds, for each connection, the last patch
it saw acknowledged or a later one it sent (never an older one, never a torn file), and
the daemon serves exactly that document.

4 cycles by default; FETCHML_LONG=1 runs 40. FETCHML_SEED picks the random choices.
"""

import asyncio
import contextlib
import io
import json
import os
import random
import signal
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from fetchml.protocol import runs
from fetchml.protocol.requests import CreateExperiment, ListRuns, UpdateRun, encode_request
from fetchml.protocol.responses import Data, Success, decode_response
from fetchml.server import tools
from tests.support.config import raw_config, write_config
from tests.support.daemon import daemons, run_cli
from tests.support.experiments import commit_id, write_experiment
from tests.support.keys import ADMIN
from tests.support.wire import data_of

LONG = os.environ.get("FETCHML_LONG") == "1"
CYCLES = 40 if LONG else 4
SEED = int(os.environ.get("FETCHML_SEED", "2604"))
CID = commit_id("run-kill9")
WINDOW = 8


class Patcher:
    """One connection pipelining UPDATE_RUNs that set its own param to 1, 2, 3, ..."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.sent = 0
        self.acked = 0

    def patch(self, n: int) -> str:
        size = self.rng.choice([0, 100, 4000, 16000])
        return json.dumps({"params": {self.name: n}, "output": "o" * size, "status": "running"})

    async def run(self, url: str) -> None:
        try:
            ws = await connect(url, compression=None, max_size=None, open_timeout=30)
        except (OSError, WebSocketException):
            return
        slots = asyncio.Semaphore(WINDOW)

        async def send() -> None:
            while True:
                await slots.acquire()
                self.sent += 1
                text = self.patch(self.sent)
                await ws.send(encode_request(UpdateRun(key_hash=ADMIN, commit_id=CID, patch=text)))

        sender = asyncio.create_task(send())
        try:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    resp = decode_response(await ws.recv())  # type: ignore[arg-type]
                    assert isinstance(resp, Data), resp
                    doc = json.loads(resp.payload)
                    assert doc["params"][self.name] == self.acked + 1
                    self.acked += 1
                    slots.release()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender


async def test_run_json_survives_kill9(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\nrun.json kill -9 loop: {CYCLES} cycles, seed {SEED} (FETCHML_SEED)")
    config = write_config(tmp_path / "config.yaml", raw_config(tmp_path))
    path = tmp_path / "experiments" / CID.hex() / "run.json"
    patchers = [Patcher(f"c{n}", random.Random(rng.random())) for n in range(2)]
    acked_total = 0
    with daemons(tmp_path) as start:
        daemon = await start(config).wait_ready()
        client = await daemon.client()
        resp = await client.call(CreateExperiment(key_hash=ADMIN, commit_id=CID, job_name="k"))
        assert isinstance(resp, Success), resp
        for cycle in range(CYCLES + 1):
            if cycle:
                daemon = await start(config).wait_ready()
                stored = runs.load_document(path.read_bytes())
                assert stored is not None, f"cycle {cycle}: run.json unreadable"
                for p in patchers:
                    assert p.acked <= stored["params"][p.name] <= p.sent, (cycle, p.name)
                    p.sent = p.acked = stored["params"][p.name]
                client = await daemon.client()
                listed = data_of(await client.call(ListRuns(key_hash=ADMIN)), "runs")
                assert listed["runs"][0]["run"] == stored
            if cycle == CYCLES:
                break
            target = rng.randint(1, 40)
            tasks = [asyncio.create_task(p.run(daemon.url)) for p in patchers]
            while sum(p.acked for p in patchers) < acked_total + target:
                await asyncio.sleep(0.002)
            daemon.send_signal(signal.SIGKILL)
            await daemon.wait_exit()
            await asyncio.gather(*tasks)
            acked_total = sum(p.acked for p in patchers)
        await daemon.shutdown()
    print(f"  {acked_total} UPDATE_RUNs acknowledged across {CYCLES} kills")


def test_fsck_reports_and_repairs_unreadable_documents(tmp_path: Path) -> None:
    base = tmp_path / "experiments"
    good, broken, big, linked = (commit_id(f"fsck-{n}") for n in range(4))
    for cid in (good, broken, big, linked):
        write_experiment(base, cid, timestamp=1_700_000_000)
    doc = runs.apply_patch(None, {"name": "fine"}, default_name="x", now=1_700_000_000)
    (base / good.hex() / "run.json").write_text(runs.dumps(doc))
    (base / broken.hex() / "run.json").write_text('{"name": ')
    (base / big.hex() / "run.json").write_text(json.dumps({"notes": "x" * 70000}))
    (base / linked.hex() / "run.json").symlink_to(base / good.hex() / "run.json")

    out = io.StringIO()
    assert tools.fsck(base, False, out=out) == 1
    report = out.getvalue()
    for cid in (broken, big, linked):
        assert f"{cid.hex()}: run.json unreadable" in report
    assert good.hex() not in report
    assert report.endswith("4 experiments checked, 3 problem(s) found\n")

    inspected = io.StringIO()
    tools.inspect(base, good.hex(), True, out=inspected)
    assert json.loads(inspected.getvalue())[good.hex()]["run"] == doc

    before = int(time.time())
    result = run_cli("fsck", "--base-path", str(base), "--repair")
    assert result.returncode == 1, result.stdout + result.stderr
    for cid in (broken, big, linked):
        directory = base / cid.hex()
        assert not os.path.lexists(directory / "run.json")
        (moved,) = directory.glob("run.json.bad-*")
        assert int(moved.name.removeprefix("run.json.bad-")) >= before
        assert f"{cid.hex()}: repaired: run.json moved to {moved.name}" in result.stdout
    assert (base / good.hex() / "run.json").read_text() == runs.dumps(doc)
    assert tools.fsck(base, False, out=io.StringIO()) == 0
