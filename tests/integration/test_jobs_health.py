"""GET /health over a real daemon: the experiment count is cached (the data directory is
listed at most every 10 s, not on every call) and the status is "degraded", still HTTP
200, while the data directory cannot be listed."""

import json
from pathlib import Path

from fetchml.server.health import REFRESH_S
from tests.support.experiments import commit_id, write_experiment
from tests.support.http import http_get
from tests.support.inproc import Daemon, DaemonFactory


class Clock:
    """Stands in for time.monotonic in the daemon's CachedCount."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def health(daemon: Daemon) -> dict[str, object]:
    response = await http_get(daemon, "/health")
    assert response.status == 200
    doc: dict[str, object] = json.loads(response.body)
    return doc


async def started(start_daemon: DaemonFactory, base: Path) -> tuple[Daemon, Clock]:
    for label in ("one", "two"):
        write_experiment(base, commit_id(label), timestamp=1_700_000_000)
    daemon: Daemon = await start_daemon()
    clock = Clock()
    daemon.app.experiment_count.clock = clock
    return daemon, clock


async def test_the_experiment_count_is_cached_for_10_s(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    base = tmp_path / "experiments"
    daemon, clock = await started(start_daemon, base)
    first = await health(daemon)
    assert (first["status"], first["experiments"]) == ("ok", 2)
    assert set(first) >= {"status", "version", "uptime_s", "connections", "watchers"}

    write_experiment(base, commit_id("three"), timestamp=1_700_000_000)
    assert (await health(daemon))["experiments"] == 2  # not listed again
    clock.t += REFRESH_S - 0.1
    assert (await health(daemon))["experiments"] == 2
    clock.t += 0.1
    assert (await health(daemon))["experiments"] == 3
    clock.t -= 60  # a clock that steps back refreshes too, rather than never again
    write_experiment(base, commit_id("four"), timestamp=1_700_000_000)
    assert (await health(daemon))["experiments"] == 4


async def test_degraded_while_the_data_directory_cannot_be_listed(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    base = tmp_path / "experiments"
    daemon, clock = await started(start_daemon, base)
    assert (await health(daemon))["status"] == "ok"

    aside = tmp_path / "aside"
    base.rename(aside)
    base.write_text("not a directory\n")
    clock.t += REFRESH_S
    doc = await health(daemon)
    assert (doc["status"], doc["experiments"]) == ("degraded", 2)  # the last good count

    base.unlink()
    aside.rename(base)
    write_experiment(base, commit_id("three"), timestamp=1_700_000_000)
    clock.t += REFRESH_S
    doc = await health(daemon)
    assert (doc["status"], doc["experiments"]) == ("ok", 3)
