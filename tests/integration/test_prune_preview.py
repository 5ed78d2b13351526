"""PRUNE_PREVIEW: PRUNE's selection, removing nothing; a control request, never audited."""

import time
from pathlib import Path

import pytest

from fetchml.protocol.enums import ErrorCode, PruneType
from fetchml.protocol.requests import ListExperiments, Prune, PrunePreview, Status
from fetchml.protocol.responses import StatusReport
from tests.support.config import custom_config, custom_hash
from tests.support.experiments import by_byte, commit_id, write_experiment
from tests.support.inproc import DaemonFactory
from tests.support.keys import ADMIN, hash_of
from tests.support.wire import data_of, error_of

KEEP = PruneType.KEEP_NEWEST
OLDER = PruneType.OLDER_THAN_DAYS


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """The daemon's experiment tree (make_config puts it here)."""
    return tmp_path / "experiments"


def on_disk(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir())


async def test_preview_selects_what_prune_removes(start_daemon: DaemonFactory, base: Path) -> None:
    now = int(time.time())
    newest, tie_low, tie_high, oldest, broken = (by_byte(n) for n in (0x0A, 0x02, 0x03, 0x01, 0x04))
    write_experiment(base, newest, timestamp=now - 60)
    write_experiment(base, tie_low, timestamp=now - 3 * 86400)
    write_experiment(base, tie_high, timestamp=now - 3 * 86400)
    write_experiment(base, oldest, timestamp=now - 10 * 86400)
    write_experiment(base, broken, timestamp=0, meta=b"\x01\x00")
    daemon = await start_daemon()
    client = await daemon.client()
    everything = on_disk(base)

    async def preview(kind: PruneType, value: int) -> list[str]:
        resp = await client.call(PrunePreview(key_hash=ADMIN, prune_type=kind, value=value))
        pruned: list[str] = data_of(resp, "pruned")["pruned"]
        return pruned

    assert await preview(KEEP, 2) == sorted([tie_high.hex(), oldest.hex()])
    assert await preview(KEEP, 5) == []
    assert await preview(OLDER, 5) == [oldest.hex()]
    assert await preview(OLDER, 2) == sorted([tie_low.hex(), tie_high.hex(), oldest.hex()])
    assert await preview(OLDER, 30) == []
    assert on_disk(base) == everything  # nothing removed
    listed = data_of(await client.call(ListExperiments(key_hash=ADMIN)), "experiments")
    assert len(listed) == 5

    expected = await preview(KEEP, 2)
    resp = await client.call(Prune(key_hash=ADMIN, prune_type=KEEP, value=2))
    assert data_of(resp, "pruned") == {"pruned": expected}
    assert await preview(KEEP, 2) == []


async def test_preview_by_scope_own_sees_only_own(start_daemon: DaemonFactory, base: Path) -> None:
    for n, user, timestamp in [(1, "pat", 1_700_000_100), (2, "pat", 1_700_000_200)]:
        write_experiment(base, by_byte(n), timestamp=timestamp, user=user)
    for n in (3, 4):
        write_experiment(base, by_byte(n), timestamp=1_600_000_000 + n, user="alice")
    daemon = await start_daemon(custom_config(base.parent))
    client = await daemon.client()
    pat = custom_hash("pat")
    resp = await client.call(PrunePreview(key_hash=pat, prune_type=KEEP, value=1))
    assert data_of(resp, "pruned") == {"pruned": [by_byte(1).hex()]}
    assert len(on_disk(base)) == 4
    denied = PrunePreview(key_hash=hash_of("alice"), prune_type=KEEP, value=1)
    error_of(await client.call(denied), ErrorCode.PERMISSION_DENIED, "Insufficient permissions")


async def test_preview_is_rate_limited_and_not_audited(
    start_daemon: DaemonFactory, base: Path, tmp_path: Path
) -> None:
    write_experiment(base, commit_id("kept"), timestamp=1_700_000_000, user="admin")
    write_experiment(base, commit_id("old"), timestamp=1_600_000_000, user="admin")
    daemon = await start_daemon(rate_limit={"control_requests_per_minute": 3})
    client = await daemon.client()
    for _ in range(4):  # pipelined: all four are read well within a refill period
        await client.send(PrunePreview(key_hash=ADMIN, prune_type=KEEP, value=1))
    responses = [await client.recv() for _ in range(4)]
    for resp in responses[:3]:
        assert data_of(resp, "pruned") == {"pruned": [commit_id("old").hex()]}
    error_of(responses[3], ErrorCode.SERVER_OVERLOADED)
    assert isinstance(await client.call(Status(key_hash=hash_of("alice"))), StatusReport)

    audit = tmp_path / "audit.jsonl"
    assert not audit.exists() or audit.read_text() == ""
    assert len(on_disk(base)) == 2
