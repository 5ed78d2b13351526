"""MetricLogger runs: identity, the run document, timestamps, resume without duplicates."""

import asyncio
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from fetchml.client import (
    Client,
    InvalidRequest,
    Metric,
    MetricLogger,
    MetricsRejected,
    PermissionDenied,
    RunSummary,
)
from fetchml.client.batches import encode_name, queued
from fetchml.client.runinfo import (
    check_tags,
    flatten_params,
    git_commit,
    param_value,
)
from fetchml.client.settings import RUN_ID_ENV, Settings
from fetchml.client.shipper import Shipper, ShipperConfig
from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.metrics import RECORD_HEAD, RECORD_MIN
from fetchml.protocol.requests import LogMetricsAt, decode_request, encode_request
from fetchml.protocol.responses import Error, Success, encode_response
from tests.support.daemon import ROOT
from tests.support.daemon import DaemonProcess as ServerProcess
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY, ALICE_KEY, ANALYST_KEY, BOB_KEY, WORKER_KEY


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


def test_params_are_flattened_and_made_json() -> None:
    params = {
        "opt": {"lr": 0.1, "betas": (0.9, 0.999), "sched": {"kind": "cos", "warm": 5}},
        "layers": [64, None, {"a": math.nan}],
        "seed": None,
        "big": 2**60,
        "bad": math.nan,
        "up": math.inf,
        "down": -math.inf,
        "flag": True,
        "obj": Opaque(),
        "path": Path("/data/x"),
        7: "int key",
    }
    assert flatten_params(params) == {
        "opt.lr": 0.1,
        "opt.betas": "[0.9,0.999]",
        "opt.sched.kind": "cos",
        "opt.sched.warm": 5,
        "layers": '[64,null,{"a":NaN}]',
        "seed": "None",
        "big": str(2**60),
        "bad": "NaN",
        "up": "Infinity",
        "down": "-Infinity",
        "flag": True,
        "obj": "opaque!",
        "path": "/data/x",
        "7": "int key",
    }
    assert param_value(2**53) == 2**53 and param_value(-(2**53) - 1) == str(-(2**53) - 1)


def test_params_beyond_the_limits_name_the_key() -> None:
    with pytest.raises(InvalidRequest, match=r"params\.opt\.note: a value must be at most 4096"):
        flatten_params({"opt": {"note": "x" * 4097}})
    flatten_params({"note": "é" * 2048})  # 4,096 bytes is fine
    with pytest.raises(
        InvalidRequest, match=r"params\.a\.b+: a key must be 1\.\.255 bytes, got 256"
    ):
        flatten_params({"a": {"b" * 254: 1}})
    with pytest.raises(InvalidRequest, match=r"params\.: a key must be 1\.\.255 bytes, got 0"):
        flatten_params({"": 1})
    with pytest.raises(InvalidRequest, match="params: at most 1000 params, got 1001"):
        flatten_params({f"p{i}": i for i in range(1001)})
    known = {f"p{i}" for i in range(999)}
    assert len(flatten_params({"p0": 1, "new": 2}, known)) == 2  # 1,000 in all
    with pytest.raises(InvalidRequest, match="params: at most 1000 params, got 1001"):
        flatten_params({"new": 1, "newer": 2}, known)
    with pytest.raises(InvalidRequest, match="params must be a mapping"):
        flatten_params([("a", 1)])  # type: ignore[arg-type]


def test_tags_are_checked_and_deduplicated() -> None:
    assert check_tags(["a", "b", "a"]) == ["a", "b"]
    with pytest.raises(InvalidRequest, match=r"tags: must be 1\.\.64 bytes, got 65"):
        check_tags(["x" * 65])
    with pytest.raises(InvalidRequest, match="tags: at most 100 tags, got 101"):
        check_tags(str(i) for i in range(101))
    with pytest.raises(InvalidRequest, match="not one str"):
        check_tags("abc")


def test_git_commit_of_the_working_directory(tmp_path: Path) -> None:
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_commit(str(outside)) is None
    repo = tmp_path / "repo"
    repo.mkdir()
    env = os.environ | {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for argv in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *argv], cwd=repo, env=env, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert git_commit(str(repo)) == head and len(head) == 40


def test_git_commit_without_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to be found
    assert git_commit() is None


# -- against a daemon ----------------------------------------------------------------


def run_of(server: ServerProcess, run_id: str, key: str = ADMIN_KEY) -> RunSummary:
    async def get() -> RunSummary:
        async with Client.connect(server.url, api_key=key) as c:
            page = await c.list_runs_page({"id": run_id})
            (row,) = page.runs
            return row

    return asyncio.run(get())


def records_of(server: ServerProcess, run_id: str) -> list[Metric]:
    async def get() -> list[Metric]:
        async with Client.connect(server.url, api_key=ADMIN_KEY) as c:
            return await c.query(run_id)

    return asyncio.run(get())


def test_a_new_run_is_created_started_and_finished(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # a git checkout: its HEAD is the run's git_commit
    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    params = {"opt": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": None}
    with MetricLogger(
        url=shared_server.url,
        api_key=ADMIN_KEY,
        name="resnet",
        project="vision",
        params=params,
        tags=["a", "b"],
        notes="first try",
    ) as ml:
        assert re.fullmatch("[0-9a-f]{40}", ml.run_id)
        started = run_of(shared_server, ml.run_id)  # started before the constructor returned
        ml.log("loss", 0.5)
    assert started.run is not None and started.job_name == "resnet"
    assert (started.run.name, started.run.project, started.run.status) == (
        "resnet",
        "vision",
        "running",
    )
    assert started.run.params == {"opt.lr": 0.1, "opt.betas": "[0.9,0.99]", "seed": "None"}
    assert (started.run.tags, started.run.notes) == (("a", "b"), "first try")
    assert started.run.git_commit == head
    assert (started.run.host, started.run.pid) == (socket.gethostname(), os.getpid())
    done = run_of(shared_server, ml.run_id)
    assert done.run is not None and done.run.status == "finished"
    assert done.run.ended_at is not None and done.metrics_count == 1
    other = MetricLogger(url=shared_server.url, api_key=ADMIN_KEY)
    other.close()
    assert other.run_id != ml.run_id  # a fresh random ID each time
    assert run_of(shared_server, other.run_id).run.name == other.run_id  # type: ignore[union-attr]


def test_a_failing_block_marks_the_run_failed(shared_server: ServerProcess) -> None:
    ml = MetricLogger(url=shared_server.url, api_key=ADMIN_KEY, name="boom")
    with pytest.raises(ZeroDivisionError), ml:
        ml.log("loss", 1.0)
        1 / 0  # noqa: B018
    row = run_of(shared_server, ml.run_id)
    assert row.run is not None and row.run.status == "failed" and row.metrics_count == 1


def test_resume_by_run_id_or_environment_keeps_what_is_not_given(
    shared_server: ServerProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(ROOT)
    with MetricLogger(
        url=shared_server.url, api_key=ALICE_KEY, name="long", params={"lr": 0.1, "bs": 32}
    ) as first:
        first.log("loss", 1.0)
    monkeypatch.chdir(tmp_path)  # no git here: the stored git_commit stays
    monkeypatch.setenv(RUN_ID_ENV, first.run_id)
    with MetricLogger(url=shared_server.url, api_key=ALICE_KEY, params={"lr": 0.05}) as again:
        assert again.run_id == first.run_id
        during = run_of(shared_server, first.run_id)
        again.log("loss", 0.5)
    assert during.run is not None and during.run.status == "running"
    row = run_of(shared_server, first.run_id)
    assert row.run is not None and row.metrics_count == 2 and row.run.status == "finished"
    assert (row.run.name, row.run.params) == ("long", {"lr": 0.05, "bs": 32})
    assert row.run.git_commit is not None and row.run.ended_at is not None
    # run_id= wins over the environment; an ID that does not exist yet is created.
    new_id = commit_of("resume-missing")
    with MetricLogger(url=shared_server.url, api_key=ALICE_KEY, run_id=new_id) as made:
        made.log("loss", 2.0)
    row = run_of(shared_server, new_id)
    assert row.user == "alice" and row.run is not None and row.run.status == "finished"
    assert row.run.git_commit is None and row.metrics_count == 1
    monkeypatch.setenv(RUN_ID_ENV, "not-hex")
    with pytest.raises(InvalidRequest, match="FETCHML_RUN_ID"):
        MetricLogger(url=shared_server.url, api_key=ALICE_KEY)
    with pytest.raises(InvalidRequest, match="run_id"):
        MetricLogger(url=shared_server.url, api_key=ALICE_KEY, run_id="abc")


def test_resuming_someone_elses_run_or_without_jobs_update_is_refused(
    shared_server: ServerProcess,
) -> None:
    with MetricLogger(url=shared_server.url, api_key=ALICE_KEY, name="mine") as ml:
        ml.log("loss", 1.0)
    with pytest.raises(PermissionDenied, match=r"bob may not log to experiment .*Access denied"):
        MetricLogger(url=shared_server.url, api_key=BOB_KEY, run_id=ml.run_id)
    with pytest.raises(PermissionDenied, match="lacks jobs:update"):
        MetricLogger(url=shared_server.url, api_key=ANALYST_KEY, run_id=ml.run_id)
    with pytest.raises(PermissionDenied, match="wendy may not start a run"):
        MetricLogger(url=shared_server.url, api_key=WORKER_KEY)
    row = run_of(shared_server, ml.run_id)
    assert row.metrics_count == 1 and row.run is not None and row.run.status == "finished"


def test_the_old_form_writes_no_run_document(shared_server: ServerProcess) -> None:
    commit = commit_of("runs-old-form")
    with MetricLogger(commit, shared_server.url, ADMIN_KEY, heartbeat_interval=0.01) as ml:
        ml.log("loss", 1.0)
        with pytest.raises(InvalidRequest, match="no run document"):
            ml.set_params({"lr": 1})
    row = run_of(shared_server, commit)
    assert row.run is None and row.metrics_count == 1 and ml.run_id == commit
    with pytest.raises(InvalidRequest, match="name, params: only for a run"):
        MetricLogger(commit, shared_server.url, ADMIN_KEY, name="x", params={"a": 1})
    with pytest.raises(InvalidRequest, match="project, notes: only for a run"):
        MetricLogger(commit, shared_server.url, ADMIN_KEY, notes="n")
    with pytest.raises(InvalidRequest, match="a commit or a run_id, not both"):
        MetricLogger(commit, shared_server.url, ADMIN_KEY, run_id=commit)


def test_params_tags_and_notes_are_delivered_before_close_returns(
    shared_server: ServerProcess,
) -> None:
    ml = MetricLogger(url=shared_server.url, api_key=ADMIN_KEY, params={"a": 1})
    ml.set_params({"b": {"c": 2}})
    ml.set_params({"a": 3})
    ml.set_tags(["x", "y"])
    ml.set_notes("note")
    with pytest.raises(InvalidRequest, match=r"params\.k+: a key must be 1\.\.255 bytes"):
        ml.set_params({"k" * 256: 1})  # in the caller's thread, nothing queued
    with pytest.raises(InvalidRequest, match="params: at most 1000 params, got 1001"):
        ml.set_params({f"p{i}": i for i in range(999)})
    ml.close()
    row = run_of(shared_server, ml.run_id)
    assert row.run is not None
    assert (row.run.params, row.run.tags, row.run.notes) == ({"a": 3, "b.c": 2}, ("x", "y"), "note")
    assert row.run.status == "finished"
    with pytest.raises(RuntimeError, match="closed"):
        ml.set_notes("late")


def test_a_refused_run_update_is_reported_like_rejected_points(
    shared_server: ServerProcess,
) -> None:
    """Two sets of 10 params of 4,000 bytes pass the client's limits, but make a document
    over 64 KiB: the second UPDATE_RUN is refused, and only it."""
    ml = MetricLogger(url=shared_server.url, api_key=ADMIN_KEY)
    ml.set_params({f"p{i}": "x" * 4000 for i in range(10)})
    ml.set_params({f"q{i}": "x" * 4000 for i in range(10)})
    with pytest.raises(InvalidRequest, match=r"run: update too large \(80\d\d\d > 65535"):
        ml.set_params({f"r{i}": "x" * 4000 for i in range(20)})  # one alone is refused at once
    ml.log("loss", 1.0)
    with pytest.raises(MetricsRejected, match=r"run update \['params'\] refused: run: document"):
        ml.close()
    row = run_of(shared_server, ml.run_id)
    assert row.metrics_count == 1 and row.run is not None and len(row.run.params) == 10
    assert row.run.status == "finished"


def test_heartbeats_while_alive(shared_server: ServerProcess) -> None:
    with MetricLogger(url=shared_server.url, api_key=ADMIN_KEY, heartbeat_interval=0.05) as ml:
        first = run_of(shared_server, ml.run_id).run
        assert first is not None and first.heartbeat_at is not None
        deadline = time.monotonic() + 5
        while True:  # heartbeat_at has whole seconds: wait for the next one
            now = run_of(shared_server, ml.run_id).run
            assert now is not None and now.heartbeat_at is not None
            if now.heartbeat_at > first.heartbeat_at:
                break
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
    assert now.status == "running"


def test_points_carry_the_time_they_were_logged(
    server_process: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Points logged while the daemon is down keep their own time (whole seconds), as do
    points given a timestamp."""
    server_process.start()
    ml = MetricLogger(url=server_process.url, api_key=ADMIN_KEY, max_backoff=0.05)
    server_process.kill()
    logged = []
    for i in range(3):
        before = time.time()
        ml.log("loss", float(i))
        logged.append((int(before), int(time.time())))
        if i == 0:
            time.sleep(1.0)  # one batch, two different seconds
    ml.log("old", 1.0, timestamp=1_700_000_000.9)
    ml.log_dict({"a": 1.0, "b": 2.0}, step=3, timestamp=1_700_000_001)
    for bad in (946_684_799, time.time() + 400, math.nan, True, "now"):
        with pytest.raises(InvalidRequest, match="timestamp must be Unix seconds"):
            ml.log("loss", 1.0, timestamp=bad)  # type: ignore[arg-type]
    server_process.start()
    assert ml.close()
    records = records_of(server_process, ml.run_id)
    assert [(r.name, r.value) for r in records] == [
        ("loss", 0.0),
        ("loss", 1.0),
        ("loss", 2.0),
        ("old", 1.0),
        ("a", 1.0),
        ("b", 2.0),
    ]
    for record, (low, high) in zip(records, logged, strict=False):
        assert low <= record.timestamp <= high
    assert records[1].timestamp - records[0].timestamp >= 1  # not the time of delivery
    assert [r.timestamp for r in records[3:]] == [1_700_000_000, 1_700_000_001, 1_700_000_001]


async def test_a_reconnect_skips_what_the_run_stored_and_warns_of_another_writer(
    shared_server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Shipper._reconcile against a daemon: the run holds the first batch and 4 records of
    the second (their answers lost); those are skipped, the rest sent once. Records of
    another writer in the window (1, or 40: more than the window, not even read):
    everything is sent again, with one warning per logger."""
    points = queued(*(("m", float(i), i, 1_795_735_109.0 + i) for i in range(30)))
    ours = [(float(i), 1_795_735_109 + i) for i in range(30)]
    for foreign in (0, 1, 40):
        run = commit_of(f"reconcile-{foreign}")
        async with Client.connect(shared_server.url, api_key=ADMIN_KEY) as c:
            await c.create_experiment(run, "")
            config = ShipperConfig(
                commit=bytes.fromhex(run), settings=c.settings, batch_size=10, run_patch={}
            )
            ship = Shipper(config, list(points))
            ship.batcher.names["m"] = encode_name("m")
            ship.batcher.base = 0
            ship.batcher.drain(slots=64, cut=True)
            first, second, _ = ship.batcher.unacked.values()
            theirs = [(1_795_735_000, "m", -1.0, 0)] * foreign
            if theirs:
                await c.log_metrics_at(run, theirs)
            await c._success(first.message)
            four = second.records[: 4 * (RECORD_MIN + 1)]
            request = LogMetricsAt(
                key_hash=c.settings.key_hash, commit_id=bytes.fromhex(run), count=4, records=four
            )
            await c._success(encode_request(request))
            ship._sent = True
            await ship._reconcile(c)
            ship.batcher.resend_all()
            while (batch := ship.batcher.next_batch()) is not None:
                await c._success(batch.message)
                ship.batcher.acknowledged(batch.seq)
            stored = [(r.value, r.timestamp) for r in await c.query(run)]
        warnings = caplog.text.count("possible duplicates: another writer")
        if not foreign:
            assert stored == ours and ship.ledger.recovered == 14
            assert ship.batcher.base == 30 and warnings == 0
        else:
            assert stored == [(-1.0, 1_795_735_000)] * foreign + ours[:14] + ours
            assert ship.ledger.recovered == 0 and ship.batcher.base == foreign + 14 + 30
            assert warnings == (1 if foreign == 1 else 2)


def test_a_script_that_dies_of_an_exception_leaves_its_run_failed(
    shared_server: ServerProcess,
) -> None:
    """No close(), no `with`: the exit hook delivers the points and sets "failed" after an
    uncaught exception ("finished" after a clean exit)."""
    ids = {}
    for ending in ("1 / 0", "pass"):
        script = (
            "from fetchml import MetricLogger\n"
            f"ml = MetricLogger(url={shared_server.url!r}, api_key={ADMIN_KEY!r})\n"
            "print(ml.run_id, flush=True)\n"
            "ml.log('loss', 1.0)\n"
            f"{ending}\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == (1 if ending == "1 / 0" else 0), done.stderr
        ids[ending] = done.stdout.strip()
    for ending, status in (("1 / 0", "failed"), ("pass", "finished")):
        row = run_of(shared_server, ids[ending])
        assert row.run is not None and (row.run.status, row.metrics_count) == (status, 1)


async def test_after_an_error_answer_batches_go_one_at_a_time_until_it_is_stored() -> None:
    """A scripted peer (the daemon fails writes only on a full or broken disk): on the
    first connection the third batch's write fails, and so does every later one (applied
    whole or not at all); on the second the first batch fails once more and the rest would
    pass. Pipelined, the batches behind it would be stored before it; one at a time until
    it is stored, the peer holds every batch once, in the order they were cut."""
    stored: list[int] = []
    seen: list[int] = []

    async def script(ws: ServerConnection) -> None:
        seen.append(0)
        connection = len(seen)
        async for message in ws:
            assert isinstance(message, bytes)
            request = decode_request(message)
            assert isinstance(request, LogMetricsAt)
            seen[-1] += 1
            fail = (connection == 1 and seen[-1] >= 3) or (connection == 2 and seen[-1] == 1)
            now = int(time.time())
            if fail:
                error = Error(timestamp=now, code=ErrorCode.STORAGE_ERROR, message="disk")
                await ws.send(encode_response(error))
                continue
            stored.append(RECORD_HEAD.unpack_from(request.records)[1])
            await ws.send(encode_response(Success(timestamp=now, message=str(request.count))))

    server = await serve(script, "127.0.0.1", 0, compression=None)
    try:
        port = server.sockets[0].getsockname()[1]
        settings = Settings(f"ws://127.0.0.1:{port}/ws", ADMIN_KEY)
        config = ShipperConfig(
            commit=bytes(20), settings=settings, batch_size=10, create_experiment=False
        )
        points = queued(*(("m", float(i), i, 1_795_735_109.0) for i in range(60)))
        ship = Shipper(config, list(points))
        ship.batcher.names["m"] = encode_name("m")
        ship._checked = True  # no start check: the peer speaks only LOG_METRICS_AT
        ship.stop = True
        await asyncio.wait_for(ship.run(), 30)
    finally:
        server.close()
        await server.wait_closed()
    assert stored == list(range(0, 60, 10)) and ship.ledger.acknowledged == 60
    assert len(seen) == 3 and seen[:2] == [6, 1]  # the retry went alone, twice
