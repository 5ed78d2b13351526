"""The jobs view: the queue and its history as STATUS shows them to the key, and cancel."""

from fetchml.client.connection import Client
from tests.support.browser import Page, new_id, run
from tests.support.daemon import DaemonProcess
from tests.support.keys import ALICE_KEY, BOB_KEY


async def queue(url: str, key: str, name: str) -> str:
    async with Client.connect(url, api_key=key) as c:
        return (await c.queue_job(name, new_id())).id


async def statuses(url: str, key: str) -> dict[str, str]:
    async with Client.connect(url, api_key=key) as c:
        return {job.id: job.status.name.lower() for job in (await c.status()).jobs}


def test_the_queue_as_the_key_sees_it_and_cancel(page: Page, dashd: DaemonProcess) -> None:
    mine = run(queue(dashd.url, ALICE_KEY, "alice-train"))
    theirs = run(queue(dashd.url, BOB_KEY, "bob-train"))
    page.logged_in(ALICE_KEY, "#/jobs")
    page.wait(lambda: page.all(f"#jobs-table tr[data-id='{mine}']"), "alice's job")
    assert not page.all(f"#jobs-table tr[data-id='{theirs}']")  # scope own
    row = f"#jobs-table tr[data-id='{mine}']"
    assert page.text(f"{row} td.status") == "queued"
    page.click(f"{row} button.cancel")
    page.wait(lambda: page.text(f"{row} button.cancel") == "Confirm cancel", "the confirm step")
    assert run(statuses(dashd.url, ALICE_KEY))[mine] == "queued"  # not yet
    page.click(f"{row} button.cancel")
    page.wait(lambda: page.text(f"{row} td.status") == "cancelled", "the cancelled job")
    assert "alice-train: cancelled 1 job(s)" in page.text("#jobs-notice")
    assert not page.all(f"{row} button.cancel")
    assert run(statuses(dashd.url, ALICE_KEY))[mine] == "cancelled"
    assert run(statuses(dashd.url, BOB_KEY))[theirs] == "queued"


def test_a_cancel_the_daemon_refuses_says_why(page: Page, dashd: DaemonProcess) -> None:
    job = run(queue(dashd.url, ALICE_KEY, "alice-gone"))
    page.logged_in(ALICE_KEY, "#/jobs")
    row = f"#jobs-table tr[data-id='{job}']"
    page.wait(lambda: page.all(f"{row} button.cancel"), "the job's cancel button")
    page.click(f"{row} button.cancel")
    page.wait(lambda: page.text(f"{row} button.cancel") == "Confirm cancel", "the confirm step")
    # Cancelled meanwhile (on the page's connection, so no poll can redraw the row between
    # that answer and the click), then confirmed.
    page.driver.execute_async_script(
        "const [row, done] = arguments;"
        "window.__fetchml.app.call('cancelJob', {jobName: 'alice-gone'}).then(() => {"
        "  document.querySelector(row + ' button.cancel').click(); done(); });",
        row,
    )
    expected = "alice-gone: no queued or running job named 'alice-gone'"
    page.wait(lambda: expected in page.text("#jobs-notice"), "the daemon's refusal")
