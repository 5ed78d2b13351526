"""The audit file beside a real daemon: a failing write never changes an answer, and the
file rotates at logging.audit_max_bytes."""

import logging
from pathlib import Path

import pytest

from fetchml.protocol.requests import CancelJob, GetExperiment
from tests.support.http import http_get, read_audit, samples
from tests.support.inproc import DaemonFactory
from tests.support.keys import ADMIN, hash_of
from tests.support.wire import create, data_of, queue, success_of


async def test_a_failing_audit_write_is_counted_and_the_mutation_answered_success(
    start_daemon: DaemonFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fetchml.server")
    daemon = await start_daemon(logging={"audit_file": "/dev/full"})  # every write: ENOSPC
    client = await daemon.client()
    cid = await create(client, "audit-on-a-full-disk", user="alice")  # asserts SUCCESS
    data_of(await client.call(GetExperiment(key_hash=ADMIN, commit_id=cid)), "experiment")
    await queue(client, "alice", cid, "first")
    success_of(await client.call(CancelJob(key_hash=hash_of("alice"), job_name="first")))

    metrics = samples((await http_get(daemon, "/metrics")).body.decode())
    assert metrics[("fetchml_audit_write_errors_total", frozenset())] == 3.0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # rate-limited
    assert "audit file /dev/full: No space left on device" in errors[0].getMessage()


async def test_the_audit_file_rotates_at_its_size_cap(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    daemon = await start_daemon(logging={"audit_max_bytes": 4096, "audit_keep": 2})
    client = await daemon.client()
    cid = await create(client, "rotated", user="alice")
    for n in range(120):  # about 130 bytes of audit each: four files' worth
        await queue(client, "alice", cid, f"job-{n}")
    audit = tmp_path / "audit.jsonl"
    files = [audit, tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2"]
    assert sorted(tmp_path.glob("audit.jsonl*")) == sorted(files)
    assert all(f.stat().st_size <= 4096 for f in files)
    names = [e["job_name"] for f in reversed(files) for e in read_audit(f)]
    assert names == [f"job-{n}" for n in range(120 - len(names), 120)]
