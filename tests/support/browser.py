"""Headless Chromium for the dashboard's tests and bench: Debian's chromium and
chromium-driver (scripts/install-browser), a fresh profile, nothing but loopback."""

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from fetchml.client.connection import Client

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)
T = TypeVar("T")


def start_chromium(profile: Path) -> WebDriver:
    """A headless Chromium with a fresh profile under `profile`; AssertionError when the
    browser is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} missing: run scripts/install-browser (as root)"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(str(CHROMEDRIVER), env={**os.environ, "SE_AVOID_STATS": "true"})
    return webdriver.Chrome(options=options, service=service)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def new_id() -> str:
    return secrets.token_hex(20)


async def make_run(
    url: str,
    key: str,
    *,
    name: str,
    doc: dict[str, Any] | None = None,
    metrics: Iterable[tuple[str, float, int]] = (),
    run_id: str | None = None,
) -> str:
    """An experiment with a run document (`doc`, merged with the name) and metrics."""
    rid = run_id or new_id()
    async with Client.connect(url, api_key=key) as c:
        await c.create_experiment(rid, name)
        if doc is not None:
            await c.update_run(rid, {"name": name, **doc})
        points = list(metrics)
        if points:
            await c.log_metrics(rid, points)
    return rid


class Page:
    """The dashboard in one browser tab: log in, wait, read the page and its debug handle."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base

    def open(self, fragment: str = "") -> None:
        """A fresh start: no stored key, then the page (at `#fragment`)."""
        self.driver.get(self.base + "/static/favicon.svg")  # the origin, without the app
        self.driver.execute_script("sessionStorage.clear(); localStorage.clear();")
        self.driver.get(self.base + "/" + fragment)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 15) -> Any:
        try:
            wait = WebDriverWait(
                self.driver, timeout, 0.02, ignored_exceptions=(StaleElementReferenceException,)
            )
            return wait.until(lambda _: condition())
        except Exception as exc:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}") from exc

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        """The rendered text of the first match, "" when none (read in one step: views
        re-render while polling, so element handles go stale)."""
        return str(
            self.js(
                "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css
            )
        )

    def click(self, css: str) -> None:
        """Click the first match in one step (it must exist)."""
        assert self.js(
            "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e", css
        ), css

    def login(self, key: str, *, remember: bool = False) -> None:
        self.wait(lambda: self.find("#login").is_displayed(), "the login box")
        self.find("#key").send_keys(key)
        if remember:
            self.find("#remember").click()
        self.find("#login-button").click()

    def logged_in(self, key: str, fragment: str = "") -> None:
        self.open(fragment)
        self.login(key)
        self.wait(lambda: self.find("#nav").is_displayed(), "the logged-in page")

    def run_rows(self) -> list[dict[str, str]]:
        """The runs table as {column: text} per row, plus its id."""
        heads = [th.get_attribute("data-col") or "" for th in self.all("#runs-table thead th")]
        rows = []
        for tr in self.all("#runs-table tbody tr"):
            cells = [td.text for td in tr.find_elements(By.CSS_SELECTOR, "td")]
            rows.append(
                {
                    **dict(zip(heads, cells, strict=True)),
                    "row-id": tr.get_attribute("data-id") or "",
                }
            )
        return rows

    def requests_made(self) -> list[str]:
        """URLs of every request the page made since the last call (performance log)."""
        import json

        urls = []
        for entry in self.driver.get_log("performance"):  # type: ignore[no-untyped-call]
            message = json.loads(entry["message"])["message"]
            if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
                params = message["params"]
                urls.append(params.get("request", {}).get("url") or params.get("url", ""))
        return urls

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(path))
        return path


def failure_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="fetchml-web-failure-"))


def elapsed_ms(start: float) -> float:
    return (time.monotonic() - start) * 1000
