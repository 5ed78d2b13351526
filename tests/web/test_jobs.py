"""The jobs view: the queue and its history as STATUS shows them to the key, and cancel."""

import re
from typing import Any

from fetchml.client.connection import Client
from tests.support.browser import Page, new_id, run
from tests.support.daemon import DaemonProcess
from tests.support.keys import ADMIN_KEY, ALICE_KEY, BOB_KEY


async def queue(url: str, key: str, name: str, spec: dict[str, Any] | None = None) -> str:
    async with Client.connect(url, api_key=key) as c:
        return (await c.queue_job(name, new_id(), 200 if spec else 5, spec=spec)).id


async def claim(url: str, key: str, job_id: str, worker: str) -> None:
    """Take the job (queued at the top priority) as `worker` and send one heartbeat."""
    async with Client.connect(url, api_key=key) as c:
        job = await c.claim_job(worker)
        assert job is not None and job.id == job_id
        await c.update_job(job_id, "running", worker_id=worker)


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
    assert f"alice-train {mine[:8]}: cancelled 1 job(s)" in page.text("#jobs-notice")
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
    expected = f"alice-gone {job[:8]}: job {job} is cancelled, not queued or running"
    page.wait(lambda: expected in page.text("#jobs-notice"), "the daemon's refusal")


def test_cancel_takes_only_the_job_of_its_row(page: Page, dashd: DaemonProcess) -> None:
    """Two jobs share a name: cancel cancels the one of the row, by its ID."""
    first = run(queue(dashd.url, ALICE_KEY, "alice-twin"))
    second = run(queue(dashd.url, ALICE_KEY, "alice-twin"))
    page.logged_in(ALICE_KEY, "#/jobs")
    row = f"#jobs-table tr[data-id='{second}']"
    page.wait(lambda: page.all(f"{row} button.cancel"), "the second job's cancel button")
    page.click(f"{row} button.cancel")
    page.wait(lambda: page.text(f"{row} button.cancel") == "Confirm cancel", "the confirm step")
    page.click(f"{row} button.cancel")
    page.wait(lambda: page.text(f"{row} td.status") == "cancelled", "the cancelled job")
    assert f"alice-twin {second[:8]}: cancelled 1 job(s)" in page.text("#jobs-notice")
    assert page.text(f"#jobs-table tr[data-id='{first}'] td.status") == "queued"
    assert page.all(f"#jobs-table tr[data-id='{first}'] button.cancel")
    now = run(statuses(dashd.url, ALICE_KEY))
    assert (now[first], now[second]) == ("queued", "cancelled")


def test_attempts_worker_heartbeat_and_command(page: Page, dashd: DaemonProcess) -> None:
    command = ["python", "train.py", "--note", "it's a b", "--epochs", "100", "--lr", "0.1"]
    spec = {"command": command, "max_attempts": 3}
    job = run(queue(dashd.url, ALICE_KEY, "alice-spec", spec))
    run(claim(dashd.url, ADMIN_KEY, job, "w-web"))
    page.logged_in(ALICE_KEY, "#/jobs")
    row = f"#jobs-table tr[data-id='{job}']"
    page.wait(lambda: page.text(f"{row} td.status") == "running", "the running job")
    assert page.text(f"{row} td.attempts") == "0/3"
    assert page.text(f"{row} td.worker") == "w-web"
    assert re.fullmatch(r"\d+s ago", page.text(f"{row} td.heartbeat"))
    full = "python train.py --note 'it'\"'\"'s a b' --epochs 100 --lr 0.1"
    assert page.text(f"{row} td.command") == full[:37] + "..."
    title = page.js("return document.querySelector(arguments[0]).title", f"{row} td.command")
    assert title == full
