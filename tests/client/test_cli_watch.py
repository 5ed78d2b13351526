"""`fetchml watch` always ends up showing the latest state; --wait; --exit-after is exact."""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest

from fetchml.client.commands import WAIT_POLL_S
from fetchml.client.live import REDRAW_S
from tests.support.cli import Cli
from tests.support.daemon import ROOT, DaemonProcess
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY


@pytest.fixture
def run(shared_server: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(shared_server, capsys)


class Watcher:
    """`fetchml watch ...` as a process; its stdout is collected as it comes."""

    def __init__(self, server: DaemonProcess, *argv: str) -> None:
        base = [
            sys.executable,
            "-m",
            "fetchml.client.cli",
            "--url",
            server.url,
            "--api-key",
            ADMIN_KEY,
        ]
        self.proc = subprocess.Popen(
            [*base, "watch", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.out = ""
        self._grew = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            with self._grew:
                self.out += chunk.decode()
                self._grew.notify_all()

    def frames(self, commit: str) -> list[str]:
        """Each draw of the table (stdout is not a terminal: draws follow one another)."""
        return self.out.split(f"watching {commit}\n")[1:]

    def wait_for(self, what: Callable[[], bool], timeout: float = 60.0) -> float:
        """Seconds until `what()` held; fails after `timeout`."""
        started = time.monotonic()
        with self._grew:
            while not what():
                left = started + timeout - time.monotonic()
                assert left > 0 and self.proc.poll() is None, self.out + self.stderr()
                self._grew.wait(min(left, 0.05))
        return time.monotonic() - started

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(60)
        self._reader.join(60)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def watchers() -> Iterator[list[Watcher]]:
    started: list[Watcher] = []
    yield started
    for watcher in started:
        watcher.close()


def rows(frame: str) -> list[list[str]]:
    return [line.split()[:3] for line in frame.splitlines()[1:]]


def test_a_finished_run_is_drawn_at_once(run: Cli, watchers: list[Watcher]) -> None:
    """The backfill is drawn when it arrives, even right after the "waiting" placeholder:
    the redraw interval (30 s here) only spaces draws of data."""
    commit = commit_of("cli-watch-finished")
    run.ok("log", commit, "loss", "2.0", "--step", "1", "--create")
    run.ok("log", commit, "loss", "1.5", "--step", "2")
    w = Watcher(run.server, commit, "--interval", "30")
    watchers.append(w)
    w.wait_for(lambda: w.frames(commit)[:1] == ["(waiting for metrics)\n"])
    seconds = w.wait_for(lambda: any(["loss", "2", "1.5"] in rows(f) for f in w.frames(commit)))
    print(f"finished run: data drawn {seconds * 1000:.0f} ms after the placeholder")
    assert len(w.frames(commit)) == 2
    assert seconds < 10 * REDRAW_S


def test_the_last_batch_is_drawn_even_inside_the_interval(
    run: Cli, watchers: list[Watcher]
) -> None:
    """Batch 1 is drawn; batch 2 arrives well inside the 1 s interval and nothing follows:
    it is drawn once the interval ends."""
    commit = commit_of("cli-watch-throttle")
    run.ok("log", commit, "loss", "2.0", "--step", "1", "--create")
    w = Watcher(run.server, commit, "--interval", "1")
    watchers.append(w)
    w.wait_for(lambda: any(["loss", "1", "2"] in rows(f) for f in w.frames(commit)))
    run.ok("log", commit, "loss", "1.5", "--step", "2")
    seconds = w.wait_for(lambda: any(["loss", "2", "1.5"] in rows(f) for f in w.frames(commit)))
    print(f"batch inside the interval drawn after {seconds * 1000:.0f} ms (interval 1000 ms)")
    assert seconds < 10 * 1.0
    assert rows(w.frames(commit)[-1]) == [["loss", "2", "1.5"]]


def not_found_watches(server: DaemonProcess) -> float:
    """RESOURCE_NOT_FOUND answers to WATCH_METRICS so far, from the daemon's /metrics."""
    port = server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    found = re.search(
        r'^fetchml_request_errors_total\{code="RESOURCE_NOT_FOUND",opcode="WATCH_METRICS"\} (\S+)$',
        text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def test_wait_for_an_experiment_that_does_not_exist_yet(run: Cli, watchers: list[Watcher]) -> None:
    commit = commit_of("cli-watch-wait")
    before = not_found_watches(run.server)
    w = Watcher(run.server, commit, "--wait", "--json", "--exit-after", "2")
    watchers.append(w)
    deadline = time.monotonic() + 60
    while not_found_watches(run.server) == before:  # it asked, and the answer was "not found"
        assert time.monotonic() < deadline and w.proc.poll() is None, w.stderr()
        time.sleep(0.02)
    run.ok("log", commit, "loss", "2.0", "--step", "1", "--create")
    started = time.monotonic()
    run.ok("log", commit, "loss", "1.5", "--step", "2")
    run.ok("log", commit, "loss", "1.0", "--step", "3")
    assert w.proc.wait(60) == 0, w.stderr()
    seconds = time.monotonic() - started
    w.close()
    assert [json.loads(line)["step"] for line in w.out.splitlines()] == [1, 2]
    code, _, err = run("watch", commit_of("cli-watch-never"), "--json")  # without --wait
    assert (code, err) == (1, f"error: experiment {commit_of('cli-watch-never')} not found\n")
    print(f"--wait: the new experiment's records shown {seconds * 1000:.0f} ms after creation")
    assert seconds < 10 * WAIT_POLL_S


def test_exit_after_cuts_the_last_push(run: Cli) -> None:
    commit = commit_of("cli-watch-exact")
    run.ok("log", commit, "loss", "2.0", "--step", "1", "--create")
    run.ok("log", commit, "loss", "1.5", "--step", "2")
    run.ok("log", commit, "acc", "0.5", "--step", "2")  # the backfill is one push of three
    lines = run.ok("watch", commit, "--json", "--exit-after", "2").splitlines()
    assert [(json.loads(line)["name"], json.loads(line)["step"]) for line in lines] == [
        ("loss", 1),
        ("loss", 2),
    ]
    text = run.ok("watch", commit, "--exit-after", "2")
    assert rows(text.split(f"watching {commit}\n")[-1]) == [["loss", "2", "1.5"]]
    code, _, err = run("watch", commit, "--exit-after", "-1")
    assert code == 2 and "expected an integer >= 0" in err
    code, _, err = run("watch", commit, "--interval", "-0.5")
    assert code == 2 and "expected seconds 0..3600" in err
