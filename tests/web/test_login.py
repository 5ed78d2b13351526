"""Logging in to the dashboard: the key goes as the handshake's subprotocol token and as its
hash in requests, lives in sessionStorage (localStorage when remembered), never in a URL;
a failed login says why."""

import asyncio

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.browser import Page
from tests.support.daemon import DaemonProcess
from tests.support.keys import ALICE_KEY

WRONG = "fml_not_a_configured_key"


def stored(page: Page) -> list[str | None]:
    return page.js(  # type: ignore[no-any-return]
        "return [sessionStorage.getItem('fetchml.key'), localStorage.getItem('fetchml.key')]"
    )


def test_a_good_key_logs_in_a_bad_one_is_refused_and_no_url_holds_a_key(page: Page) -> None:
    page.open()
    page.login(WRONG)
    page.wait(lambda: page.text("#login-error") == "key refused", "key refused")
    assert stored(page) == [None, None]
    assert not page.find("#nav").is_displayed()

    page.find("#key").clear()
    page.login(ALICE_KEY)
    page.wait(lambda: page.find("#nav").is_displayed(), "the logged-in page")
    assert page.text("#who") == "alice (researcher)"
    assert stored(page) == [ALICE_KEY, None]
    page.find("a[href='#/jobs']").click()
    page.wait(lambda: page.all("#jobs-table"), "the jobs view")
    urls = [*page.requests_made(), page.driver.current_url]
    assert urls and not [u for u in urls if ALICE_KEY in u or WRONG in u]

    page.find("#logout").click()
    page.wait(lambda: page.find("#login").is_displayed(), "the login box after logout")
    assert stored(page) == [None, None]


def test_remembered_keys_survive_a_new_tab_and_logout_forgets_them(page: Page) -> None:
    page.open()
    page.login(ALICE_KEY, remember=True)
    page.wait(lambda: page.find("#nav").is_displayed(), "the logged-in page")
    assert stored(page) == [None, ALICE_KEY]
    page.driver.get("about:blank")
    page.driver.get(page.base + "/#/jobs")  # sessionStorage of a new page load is kept...
    page.js("sessionStorage.clear()")  # ...so drop it: only localStorage remains
    page.driver.refresh()
    page.wait(lambda: page.find("#nav").is_displayed(), "a login from localStorage")
    assert page.text("#who") == "alice (researcher)"
    page.find("#logout").click()
    page.wait(lambda: page.find("#login").is_displayed(), "the login box after logout")
    assert stored(page) == [None, None]


async def bad_handshakes(proc: DaemonProcess, count: int) -> None:
    for _ in range(count):
        try:
            async with connect(proc.url, additional_headers={"X-API-Key": WRONG}):
                raise AssertionError("a wrong key was accepted")
        except InvalidStatus as exc:
            assert exc.response.status_code == 401


def test_a_throttled_address_and_a_daemon_that_is_gone_are_told_apart(
    page: Page, dashd: DaemonProcess
) -> None:
    asyncio.run(bad_handshakes(dashd, 10))  # the 10th failure throttles 127.0.0.1
    page.open()
    page.login(WRONG)
    page.wait(lambda: page.text("#login-error").startswith("throttled"), "throttled")

    dashd.stop()
    try:
        page.find("#key").clear()
        page.login(WRONG)
        page.wait(lambda: page.text("#login-error") == "daemon unreachable", "unreachable")
    finally:
        dashd.start()
