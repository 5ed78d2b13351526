"""Client.log_metrics_at against a real daemon: points keep the client's timestamps."""

import time

import pytest

from fetchml.client import Client, InvalidRequest, NotFound
from fetchml.protocol.metrics import MetricRecord
from tests.support.experiments import commit_of
from tests.support.inproc import Daemon
from tests.support.keys import ALICE_KEY

RUN = commit_of("log-at-1")


async def test_points_keep_their_own_timestamps(daemon: Daemon) -> None:
    then = int(time.time()) - 3600
    async with Client.connect(daemon.url, api_key=ALICE_KEY) as c:
        await c.create_experiment(RUN, "sweep")
        acked = await c.log_metrics_at(RUN, [(then, "loss", 1.0, 0), (then + 1.9, "loss", 0.5, 1)])
        assert acked == 2
        assert await c.query(RUN) == [
            MetricRecord(then, 0, 1.0, "loss"),
            MetricRecord(then + 1, 1, 0.5, "loss"),
        ]


async def test_a_clock_far_ahead_and_a_missing_run_are_refused(daemon: Daemon) -> None:
    ahead = time.time() + 3600
    async with Client.connect(daemon.url, api_key=ALICE_KEY) as c:
        await c.create_experiment(commit_of("log-at-2"), "sweep")
        with pytest.raises(InvalidRequest, match="ahead of the server clock"):
            await c.log_metrics_at(commit_of("log-at-2"), [(ahead, "loss", 1.0, 0)])
        with pytest.raises(NotFound):
            await c.log_metrics_at(commit_of("log-at-3"), [(time.time(), "loss", 1.0, 0)])
        with pytest.raises(InvalidRequest, match="timestamp 12 outside"):
            await c.log_metrics_at(commit_of("log-at-2"), [(12, "loss", 1.0, 0)])
        assert await c.query(commit_of("log-at-2")) == []
