"""Heavy requests: at most `server.heavy_queries_per_user` at once per user, the rest wait
in FIFO order and are never refused; other users and light requests do not wait."""

from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import pytest

from fetchml.protocol.requests import (
    CreateExperiment,
    GetExperiment,
    LogMetrics,
    MetricPoint,
    QueryMetrics,
    Request,
)
from fetchml.protocol.responses import Data, Success
from fetchml.server.heavy import HeavyLimiter
from tests.support.inproc import DaemonFactory
from tests.support.keys import hash_of
from tests.support.wire import RawClient


async def test_beyond_the_limit_queries_wait_in_fifo_order() -> None:
    limiter = HeavyLimiter(2)
    order: list[int] = []
    release = anyio.Event()

    async def query(n: int) -> None:
        async with limiter.slot("bob"):
            order.append(n)
            await release.wait()

    async with anyio.create_task_group() as tg:
        for n in range(5):
            tg.start_soon(query, n)
            await anyio.wait_all_tasks_blocked()
        assert order == [0, 1]  # two at once, the others wait
        assert limiter.running("bob") == 2
        release.set()
    assert order == [0, 1, 2, 3, 4]
    assert limiter.running("bob") == 0


async def test_other_users_do_not_wait() -> None:
    limiter = HeavyLimiter(1)
    async with limiter.slot("bob"):
        with anyio.fail_after(1):
            async with limiter.slot("alice"):
                assert (limiter.running("alice"), limiter.running("bob")) == (1, 1)


@pytest.mark.parametrize("holding", [False, True])
async def test_a_cancelled_query_frees_its_place(holding: bool) -> None:
    """A waiter cancelled in the queue leaves it; a holder cancelled frees its slot."""
    limiter = HeavyLimiter(1)
    entered: list[str] = []

    async def query(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            async with limiter.slot("bob"):
                entered.append(name)
                await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        first, second, third = anyio.CancelScope(), anyio.CancelScope(), anyio.CancelScope()
        for name, scope in (("first", first), ("second", second), ("third", third)):
            tg.start_soon(query, name, scope)
            await anyio.wait_all_tasks_blocked()
        (first if holding else second).cancel()
        await anyio.wait_all_tasks_blocked()
        assert entered == ["first", "second"] if holding else ["first"]
        if not holding:
            first.cancel()
            await anyio.wait_all_tasks_blocked()
            assert entered == ["first", "third"]  # the cancelled waiter never ran
        tg.cancel_scope.cancel()
    assert limiter.running("bob") == 0


# -- in the daemon -------------------------------------------------------------------------------

BOB = hash_of("bob")
ALICE = hash_of("alice")


async def experiment(client: RawClient, key: bytes, commit: bytes) -> None:
    create = CreateExperiment(key_hash=key, commit_id=commit, job_name="heavy")
    assert isinstance(await client.call(create), Success)
    points = tuple(MetricPoint(step, float(step), "loss") for step in range(100))
    log = LogMetrics(key_hash=key, commit_id=commit, metrics=points)
    assert isinstance(await client.call(log), Success)


def query_metrics(key: bytes, commit: bytes, **fields: Any) -> Request:
    return QueryMetrics(key_hash=key, commit_id=commit, **fields)


def get_experiment(key: bytes, commit: bytes) -> Request:
    return GetExperiment(key_hash=key, commit_id=commit)


@pytest.mark.parametrize(
    "request_of",
    [
        partial(query_metrics, max_points=10),
        partial(query_metrics, name="loss"),
        partial(query_metrics, step_from=5, step_to=9),
        get_experiment,
    ],
    ids=["downsampling", "name filter", "step filter", "GET_EXPERIMENT"],
)
async def test_heavy_requests_wait_for_a_slot_in_the_daemon(
    start_daemon: DaemonFactory, request_of: Callable[[bytes, bytes], Request]
) -> None:
    daemon = await start_daemon(server={"heavy_queries_per_user": 1})
    bob, alice = await daemon.client(), await daemon.client()
    mine, hers = b"\x0b" * 20, b"\x0a" * 20
    await experiment(bob, BOB, mine)
    await experiment(alice, ALICE, hers)
    limiter = daemon.app.ctx.heavy

    async with limiter.slot("bob"):  # bob's only slot is taken
        await bob.send(request_of(BOB, mine))
        await anyio.wait_all_tasks_blocked()
        with anyio.move_on_after(0.3):
            await bob.recv()
            pytest.fail("a heavy request ran beyond the user's limit")
        # Another user's heavy request, and bob's own light ones on other connections, run.
        with anyio.fail_after(5):
            other = await alice.call(request_of(ALICE, hers))
            assert isinstance(other, Data)
            page = await (await daemon.client()).call(QueryMetrics(key_hash=BOB, commit_id=mine))
            assert isinstance(page, Data)
    with anyio.fail_after(5):
        answer = await bob.recv()  # once the slot is free, the waiting query runs
    assert isinstance(answer, Data), answer
    assert answer.payload
