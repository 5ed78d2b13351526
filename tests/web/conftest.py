"""Browser fixtures: one Chromium for the session, one daemon subprocess per module (on a
port fixed at start, so a restart keeps its URL), a screenshot of every failure."""

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.support.browser import Page, failure_dir, start_chromium
from tests.support.daemon import DaemonProcess, daemon_at


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def dashd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A running daemon for the module's tests (distinct runs per test)."""
    proc = daemon_at(tmp_path_factory.mktemp("daemon")).start()
    yield proc
    proc.close()


@pytest.fixture
def page(
    request: pytest.FixtureRequest, chromium: WebDriver, dashd: DaemonProcess
) -> Iterator[Page]:
    """The dashboard of `dashd` in the session's browser; a failed test leaves a screenshot."""
    tab = Page(chromium, f"http://127.0.0.1:{dashd.port}")
    yield tab
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        shot = tab.screenshot(failure_dir() / f"{request.node.name}.png")
        print(f"screenshot of the failure: {shot}")
    chromium.get("about:blank")
    chromium.get_log("performance")  # type: ignore[no-untyped-call]


@pytest.fixture
def docs_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "docs"
