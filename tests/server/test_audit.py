"""The audit file: rotation by size, failing writes, and auth failures reported per minute."""

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from fetchml.server.audit import REPORT_EVERY_S, AuditLog, AuthFailures
from fetchml.server.auth import Identity


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


ALICE = Identity("alice", "researcher", frozenset({"jobs:create"}), "own", "own")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("keep", [0, 1, 3])
def test_the_file_rotates_beyond_max_bytes_keeping_the_newest(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(path), max_bytes=4096, keep=keep)
    for n in range(300):  # about 80 bytes each: some six files' worth
        audit("queue_job", ALICE, n=n)
    audit.close()
    files = [path] + [tmp_path / f"audit.jsonl.{k}" for k in range(1, keep + 1)]
    assert sorted(tmp_path.iterdir()) == sorted(files)
    assert all(0 < f.stat().st_size <= 4096 for f in files)
    kept = [entry["n"] for f in reversed(files) for entry in lines(f)]
    assert kept == list(range(300 - len(kept), 300))  # the newest lines, in order, no gap
    assert all(f.stat().st_size > 4096 - 100 for f in files[1:])  # rotated when full


def test_rotation_continues_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("x" * 4060 + "\n")
    audit = AuditLog(str(path), max_bytes=4096, keep=1)
    audit("prune", ALICE, value=1)
    audit.close()
    assert (tmp_path / "audit.jsonl.1").read_text() == "x" * 4060 + "\n"
    assert [e["event"] for e in lines(path)] == ["prune"]


def test_a_failing_write_is_counted_and_logged_once_a_minute_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    errors = []
    audit = AuditLog("/dev/full", on_error=lambda: errors.append(1), clock=clock)
    for _ in range(100):
        audit("create_experiment", ALICE, commit="ab" * 20)  # ENOSPC, a real device
    clock.now += REPORT_EVERY_S
    audit("cancel_job", ALICE)
    audit.close()
    assert len(errors) == 101
    logged = [r for r in caplog.records if r.name == "fetchml.server.audit"]
    assert [r.levelno for r in logged] == [logging.ERROR] * 2
    assert "No space left on device" in logged[0].getMessage()
    assert "(100 failed writes" in logged[1].getMessage()


def test_auth_failures_are_reported_once_per_address_per_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    written: list[dict[str, Any]] = []
    failures = AuthFailures(lambda event, who, **fields: written.append(fields), clock=clock)
    for _ in range(200_000 // 1000):  # a flood, scaled down: the lines do not depend on it
        for peer in ("10.0.0.1", "10.0.0.2"):
            failures.add(peer, "unknown key")
        clock.now += 0.1
    assert [(w["peer"], w["count"]) for w in written] == [("10.0.0.1", 1), ("10.0.0.2", 1)]
    failures.flush()  # not a minute yet
    assert len(written) == 2
    clock.now += REPORT_EVERY_S
    failures.flush()
    assert [(w["peer"], w["count"]) for w in written[2:]] == [("10.0.0.1", 199), ("10.0.0.2", 199)]
    failures.flush(force=True)
    assert len(written) == 4  # nothing pending
    assert len(caplog.records) == 4


def test_auth_failure_memory_is_bounded_when_addresses_are_sprayed() -> None:
    clock = Clock()
    written: list[dict[str, Any]] = []
    failures = AuthFailures(lambda *a, **fields: written.append(fields), clock=clock, max_peers=50)
    for n in range(5000):
        failures.add(f"10.0.{n >> 8}.{n & 255}", "unknown key")
        failures.add(f"10.0.{n >> 8}.{n & 255}", "unknown key")
    assert len(failures._last) <= 51 and len(failures._pending) <= 51
    failures.flush(force=True)
    assert sum(w["count"] for w in written) == 10_000  # every failure reported
