"""Client against a real daemon in this event loop: every method, pipelining, errors."""

import asyncio
import math
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from fetchml.client import (
    AlreadyExists,
    AuthenticationFailed,
    Client,
    ConnectFailed,
    ConnectionLost,
    Experiment,
    FetchmlError,
    InvalidRequest,
    Job,
    JobNotFound,
    NotFound,
    PermissionDenied,
    ServerOverloaded,
)
from fetchml.protocol.enums import ErrorCode, JobStatus
from fetchml.protocol.requests import MetricPoint
from tests.support.daemon import free_port
from tests.support.experiments import commit_of
from tests.support.inproc import Daemon, DaemonFactory
from tests.support.keys import ADMIN_KEY, ALICE_KEY, ANALYST_KEY, BOB_KEY, WORKER_KEY

C1 = commit_of("connection-1")
C2 = commit_of("connection-2")


async def test_whoami_and_context_manager(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ALICE_KEY) as c:
        me = await c.whoami()
        assert (me.user, me.role, me.scope) == ("alice", "researcher", "own")
        assert me.permissions == ("jobs:create", "jobs:read", "jobs:update")
        assert not c.closed
    assert c.closed


async def test_await_connect_and_close(daemon: Daemon) -> None:
    c = await Client.connect(daemon.url, api_key=ADMIN_KEY)
    assert (await c.whoami()).user == "admin"
    await c.close()
    with pytest.raises(ConnectionLost):
        await c.whoami()


async def test_experiments(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ALICE_KEY) as c:
        assert await c.create_experiment(C1, "resnet") is True
        with pytest.raises(AlreadyExists) as info:
            await c.create_experiment(C1)
        assert info.value.code == ErrorCode.RESOURCE_ALREADY_EXISTS
        assert await c.create_experiment(C1, exist_ok=True) is False
        await c.create_experiment(bytes.fromhex(C2), "second")

        await c.log_metric(C1, "loss", 0.5, step=1)
        await c.log_metric(C1, "loss", math.nan, step=2)
        await c.log_metric(C1, "acc", math.inf, step=2)
        await c.log_metric(C1, "acc", -math.inf, step=3)
        exp = await c.get_experiment(C1)
        assert isinstance(exp, Experiment)
        assert (exp.commit_id, exp.job_name, exp.user) == (C1, "resnet", "alice")
        assert exp.metrics_count == 4 and not exp.metrics_truncated
        assert [(m.name, m.step) for m in exp.metrics] == [
            ("loss", 1),
            ("loss", 2),
            ("acc", 2),
            ("acc", 3),
        ]
        values = [m.value for m in exp.metrics]
        assert values[0] == 0.5 and math.isnan(values[1])
        assert values[2:] == [math.inf, -math.inf]
        assert exp.to_json()["metrics"][1]["value"] == "NaN"

        rows = await c.list_experiments()
        by_commit = {r.commit_id: r for r in rows}
        assert by_commit[C1].metrics_count == 4 and by_commit[C2].metrics_count == 0
        assert by_commit[C2].job_name == "second" and by_commit[C1].user == "alice"


async def test_log_metrics_query_latest(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:
        await c.create_experiment(C1)
        points = [(name, float(step) / 4, step) for step in range(500) for name in ("a", "b")]
        assert await c.log_metrics(C1, points) == 1000
        assert await c.log_points(C1, [MetricPoint(500, 1.0, "a")]) == 1

        everything = await c.query(C1)
        assert len(everything) == 1001
        assert [(m.name, m.value, m.step) for m in everything[:1000]] == points
        only_b = await c.query(C1, name="b", step_from=10, step_to=19)
        assert [(m.name, m.step) for m in only_b] == [("b", s) for s in range(10, 20)]

        page = await c.query_page(C1, limit=300)
        assert len(page) == 300 and page.next == 300
        last = await c.query_page(C1, after=1000)
        assert len(last) == 1 and last.next == 0

        pages = [p async for p in c.query_pages(C1, page_size=128)]
        assert [len(p) for p in pages] == [128] * 7 + [105]
        assert [r for p in pages for r in p.records] == everything

        down = await c.query(C1, name="a", max_points=10)
        assert len(down) == 10 and down[0].step == 0 and down[-1].step == 500

        latest = await c.latest(C1)
        assert set(latest) == {"a", "b"}
        assert (latest["a"].step, latest["a"].value) == (500, 1.0)
        assert (latest["b"].step, latest["b"].value) == (499, 499 / 4)
        assert (await c.latest(C1, name="b")).keys() == {"b"}


async def test_log_metrics_splits_large_requests(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:
        await c.create_experiment(C1)
        long_name = "n" * 200
        points = [(long_name, 1.0, i) for i in range(10_000)]  # ~2.1 MB: three messages
        assert await c.log_metrics(C1, points) == 10_000
        many = [("x", 0.0, i) for i in range(70_000)]  # more than 65535 points
        assert await c.log_metrics(C1, many) == 70_000
        assert (await c.get_experiment(C1)).metrics_count == 80_000


async def test_pipelining_5000_concurrent_calls(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ADMIN_KEY, max_in_flight=1024) as c:
        await c.create_experiment(C1)
        calls: list[Awaitable[Any]] = [
            c.log_metric(C1, "loss", float(i), step=i) for i in range(5000)
        ]
        calls.insert(2500, c.whoami())  # a barrier in the middle of the stream
        results = await asyncio.gather(*calls)
        assert results[2500].user == "admin"
        assert c.in_flight == 0
        records = await c.query(C1)
        assert [(r.step, r.value) for r in records] == [(i, float(i)) for i in range(5000)]


async def test_jobs(daemon: Daemon) -> None:
    async with (
        Client.connect(daemon.url, api_key=ALICE_KEY) as alice,
        Client.connect(daemon.url, api_key=WORKER_KEY) as worker,
    ):
        low = await alice.queue_job("train", C1, priority=2)
        high = await alice.queue_job("eval", C1, priority=9)
        assert isinstance(low, Job) and low.status == JobStatus.QUEUED
        assert (low.commit_id, low.user, low.priority) == (C1, "alice", 2)
        status = await alice.status()
        assert (status.user, status.role, status.queue_length) == ("alice", "researcher", 2)
        assert status.total == 2
        assert [j.id for j in status.jobs] == [high.id, low.id]

        claimed = await worker.claim_job("gpu-0")
        assert claimed is not None and claimed.id == high.id
        assert claimed.status == JobStatus.RUNNING and claimed.worker_id == "gpu-0"
        assert claimed.claimed_by == "wendy" and low.claimed_by is None
        assert "completed" in await worker.update_job(high.id, "completed")
        with pytest.raises(InvalidRequest):
            await worker.update_job(high.id, JobStatus.FAILED, "too late")
        with pytest.raises(JobNotFound):
            await worker.update_job("no-such-job", JobStatus.FAILED)
        with pytest.raises(InvalidRequest):
            await worker.update_job(high.id, "queued")

        assert await alice.cancel_job("train") == 1
        assert await worker.claim_job("gpu-0") is None
        with pytest.raises(JobNotFound) as info:
            await alice.cancel_job("train")
        assert info.value.code == ErrorCode.JOB_NOT_FOUND
        done = {j.id: j.status_name for j in (await alice.status()).jobs}
        assert done == {high.id: "completed", low.id: "cancelled"}


async def test_prune(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:
        for label in ("p1", "p2", "p3"):
            await c.create_experiment(commit_of(label))
        assert await c.prune(older_than_days=1) == []
        pruned = await c.prune(keep=1)
        assert len(pruned) == 2
        assert len(await c.list_experiments()) == 1
        with pytest.raises(InvalidRequest):
            await c.prune()
        with pytest.raises(InvalidRequest):
            await c.prune(keep=0)


async def test_server_errors_carry_code_and_message(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key="not-a-key", handshake_key=False) as c:
        with pytest.raises(AuthenticationFailed) as auth:
            await c.whoami()
        assert auth.value.code == ErrorCode.AUTHENTICATION_FAILED
        assert auth.value.message == "Invalid API key" and str(auth.value) == "Invalid API key"
    async with (
        Client.connect(daemon.url, api_key=ALICE_KEY) as alice,
        Client.connect(daemon.url, api_key=BOB_KEY) as bob,
        Client.connect(daemon.url, api_key=ANALYST_KEY) as analyst,
    ):
        with pytest.raises(NotFound) as missing:
            await alice.get_experiment(C1)
        assert missing.value.code == ErrorCode.RESOURCE_NOT_FOUND
        assert C1 in missing.value.message
        with pytest.raises(NotFound):
            await alice.log_metric(C1, "loss", 1.0)
        await alice.create_experiment(C1)
        with pytest.raises(PermissionDenied) as scope:
            await bob.get_experiment(C1)
        assert scope.value.code == ErrorCode.PERMISSION_DENIED
        with pytest.raises(PermissionDenied, match="Insufficient permissions"):
            await analyst.create_experiment(C2)
        with pytest.raises(InvalidRequest, match="job name"):
            await alice.queue_job("", C1)
        # the connection stays usable after errors
        assert (await alice.whoami()).user == "alice"


async def test_client_side_validation(daemon: Daemon) -> None:
    async with Client.connect(daemon.url, api_key=ADMIN_KEY) as c:
        for bad in ("abc", "zz" * 20, C1 + "00"):
            with pytest.raises(InvalidRequest) as info:
                await c.get_experiment(bad)
            assert isinstance(info.value, ValueError)
        with pytest.raises(InvalidRequest, match="metric name"):
            await c.log_metric(C1, "x" * 256, 1.0)
        with pytest.raises(InvalidRequest, match="metric name"):
            await c.log_metric(C1, "", 1.0)
        with pytest.raises(InvalidRequest, match="step"):
            await c.log_metric(C1, "loss", 1.0, step=-1)
        with pytest.raises(InvalidRequest, match="priority"):
            await c.queue_job("j", C1, priority=256)
        assert c.in_flight == 0 and not c.closed


async def test_rate_limit_is_server_overloaded(start_daemon: DaemonFactory) -> None:
    d = await start_daemon(rate_limit={"control_requests_per_minute": 2})
    async with Client.connect(d.url, api_key=ADMIN_KEY) as c:
        await c.whoami()
        await c.whoami()
        with pytest.raises(ServerOverloaded) as info:
            await c.whoami()
        assert info.value.code == ErrorCode.SERVER_OVERLOADED
        assert "rate limit" in info.value.message


async def test_ip_whitelist_is_permission_denied(start_daemon: DaemonFactory) -> None:
    d = await start_daemon(auth={"ip_whitelist": ["10.255.0.0/16"]})
    with pytest.raises(PermissionDenied) as info:
        await Client.connect(d.url, api_key=ADMIN_KEY)
    assert "403" in info.value.message


async def test_connect_failure_is_a_connection_error() -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    with pytest.raises(ConnectFailed) as info:
        await Client.connect(url, api_key=ADMIN_KEY)
    assert isinstance(info.value, ConnectionError)
    assert info.value.code == ErrorCode.NETWORK_ERROR
    assert url in info.value.message


async def test_settings_from_env_and_config_file(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FETCHML_URL", raising=False)
    monkeypatch.delenv("FETCHML_API_KEY", raising=False)
    (tmp_path / ".ml").mkdir()
    (tmp_path / ".ml" / "config.toml").write_text(
        f'api_url = "{daemon.url}"\napi_key = "{BOB_KEY}"\n'
    )
    async with Client.connect() as c:
        assert (await c.whoami()).user == "bob"
    monkeypatch.setenv("FETCHML_API_KEY", ALICE_KEY)
    async with Client.connect() as c:
        assert (await c.whoami()).user == "alice"
    async with Client.connect(api_key=ADMIN_KEY) as c:
        assert (await c.whoami()).user == "admin"
    bare = daemon.url.removeprefix("ws://").removesuffix("/ws")
    monkeypatch.setenv("FETCHML_URL", bare)
    async with Client.connect() as c:
        assert c.url == daemon.url


def test_missing_key_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fetchml.client import ConfigurationError, resolve_settings

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FETCHML_URL", raising=False)
    monkeypatch.delenv("FETCHML_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="no API key"):
        resolve_settings()
    assert resolve_settings(api_key="k").url == "ws://127.0.0.1:9103/ws"
    (tmp_path / ".ml").mkdir()
    (tmp_path / ".ml" / "config.toml").write_text("api_key = [")
    with pytest.raises(ConfigurationError, match="invalid TOML"):
        resolve_settings()
    assert resolve_settings(url="https://example.org", api_key="k").url == "wss://example.org/ws"
    with pytest.raises(FetchmlError):
        resolve_settings(url="ftp://example.org", api_key="k")
