"""The daemon's control rate limit answers SERVER_OVERLOADED; the page retries with backoff
instead of failing."""

import urllib.request
from collections.abc import Iterator

import pytest

from tests.support.browser import Page
from tests.support.daemon import DaemonProcess, daemon_at
from tests.support.http import samples
from tests.support.keys import ALICE_KEY

RATE = 600  # control requests a minute: a burst of 600, then ten a second
EXTRA = 20

BURST = """
const done = arguments[arguments.length - 1];
const app = window.__fetchml.app;
Promise.allSettled(Array.from({length: arguments[0]}, () => app.call("status"))).then((results) =>
  done(results.map((r) => r.status === "fulfilled" ? "ok" : r.reason.codeName || String(r.reason))));
"""


@pytest.fixture(scope="module")
def dashd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home = tmp_path_factory.mktemp("daemon")
    proc = daemon_at(home, rate_limit={"control_requests_per_minute": RATE}).start()
    yield proc
    proc.close()


def overloaded(proc: DaemonProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics") as response:
        text = response.read().decode()
    return sum(
        value
        for (name, labels), value in samples(text).items()
        if name == "fetchml_request_errors_total" and ("code", "SERVER_OVERLOADED") in labels
    )


def test_requests_over_the_rate_limit_are_retried_with_backoff(
    page: Page, dashd: DaemonProcess
) -> None:
    page.logged_in(ALICE_KEY, "#/jobs")
    page.driver.set_script_timeout(30)
    results = page.driver.execute_async_script(BURST, RATE + EXTRA)
    assert overloaded(dashd) > 0  # the limit was hit...
    assert results == ["ok"] * (RATE + EXTRA)  # ...and every request answered in the end
