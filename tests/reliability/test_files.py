"""Damaged, full, read-only and shared data directories (PROTOCOL.md section 1).

Torn tails are cut (and kept beside the file) on the first append, never before;
a remainder over 8 MiB is corruption: appends refused, the valid prefix still served,
fsck reports it and only `fsck --repair` truncates it. An unreadable meta.bin is
reported, listed last with nulls, never pruned. A full or read-only disk gets the
client DISK_FULL / STORAGE_ERROR and leaves nothing half-written; reads go on. A
second daemon on the same data directory refuses to start and names the first.
"""

import errno
import io
import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from fetchml.protocol.enums import ErrorCode, PruneType
from fetchml.protocol.metrics import decode_metrics_payload, decode_records, scan
from fetchml.protocol.requests import (
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    LogMetric,
    LogMetrics,
    MetricPoint,
    Prune,
    WatchMetrics,
    WhoAmI,
)
from fetchml.protocol.responses import Data, Success
from fetchml.server import files
from fetchml.server.tools import fsck
from tests.support.config import raw_config, write_config
from tests.support.daemon import DaemonProcess, daemons, run_cli
from tests.support.experiments import make_experiment, meta_bytes, record, torn_copies
from tests.support.inproc import DaemonFactory
from tests.support.keys import ADMIN, hash_of
from tests.support.mounts import bind_readonly, fill, mount_tmpfs, unmount
from tests.support.wire import RawClient, call_json, expect_error, keys, query_all

MAX_TORN_BYTES = 8 << 20
"""PROTOCOL.md: a remainder up to this size is a torn tail, a larger one is corruption."""
COMMIT = bytes.fromhex("c0" * 20)
OTHER = bytes.fromhex("0e" * 20)
ALICE = hash_of("alice")


def log_metric(commit: bytes, step: int, name: str = "loss", key: bytes = ADMIN) -> LogMetric:
    return LogMetric(key_hash=key, commit_id=commit, step=step, value=float(step), name=name)


def log_metrics(commit: bytes, steps: range, name: str = "loss") -> LogMetrics:
    points = tuple(MetricPoint(step, float(step), name) for step in steps)
    return LogMetrics(key_hash=ADMIN, commit_id=commit, metrics=points)


async def ok(client: RawClient, request: LogMetric | LogMetrics | CreateExperiment) -> Success:
    response = await client.call(request)
    assert isinstance(response, Success), response
    return response


def fsck_in_process(base: Path) -> tuple[int, str]:
    out = io.StringIO()
    return fsck(base, repair=False, out=out), out.getvalue()


def parses_whole(path: Path) -> bool:
    data = path.read_bytes()
    return scan(data).end == len(data)


# -- torn tails ----------------------------------------------------------------------------

WHOLE = record(99, "tail-record")
_garbage = random.Random(7).randbytes(1000)
TAILS = {
    "cut-in-timestamp": WHOLE[:5],
    "cut-before-name": WHOLE[:21],
    "cut-in-name": WHOLE[:-3],
    "zero-filled-after-timestamp": WHOLE[:8] + bytes(4096 - 8),
    "zero-blocks": bytes(8192),
    "garbage": b"\xff" + _garbage[1:],
    "empty-name-last": record(99, ""),
    "nul-in-name": record(99, "a\0b"),
    "exactly-8-mib": bytes(MAX_TORN_BYTES),
}
PREFIX = b"".join(record(step, f"m{step}") for step in range(5))
PREFIX_KEYS = [(f"m{step}", step) for step in range(5)]


@pytest.mark.parametrize("kind", TAILS)
async def test_torn_tail_is_cut_and_copied_on_the_first_append(
    start_daemon: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    base = tmp_path / "experiments"
    tail = TAILS[kind]
    path = make_experiment(base, COMMIT.hex(), PREFIX + tail)
    daemon = await start_daemon()
    client = await daemon.client()

    # Readers see the valid prefix; nothing is cut before the first append.
    assert keys(await query_all(client, COMMIT)) == PREFIX_KEYS
    experiment = await call_json(client, GetExperiment(key_hash=ADMIN, commit_id=COMMIT))
    assert experiment["metrics_count"] == 5
    assert path.read_bytes() == PREFIX + tail
    assert torn_copies(path) == []

    await ok(client, log_metric(COMMIT, 5, "after"))

    data = path.read_bytes()
    assert data[: len(PREFIX)] == PREFIX
    assert keys(decode_records(data[len(PREFIX) :])) == [("after", 5)]
    assert [copy.read_bytes() for copy in torn_copies(path)] == [tail]
    assert keys(await query_all(client, COMMIT)) == [*PREFIX_KEYS, ("after", 5)]
    assert fsck_in_process(base)[0] == 0
    await client.ws.close()


# -- corruption: a remainder over 8 MiB ------------------------------------------------------

GOOD = 100


def corrupt_metrics() -> tuple[bytes, int]:
    """100 valid records, then more than 8 MiB of records whose first has its timestamp
    zeroed (a structure-breaking change more than 8 MiB before the end).
    Returns (file, valid prefix end)."""
    good = b"".join(record(step, "good") for step in range(GOOD))
    filler = record(0, "filler")
    rest = filler * (MAX_TORN_BYTES // len(filler) + 10)
    return good + bytes(8) + rest[8:], len(good)


GOOD_KEYS = [("good", step) for step in range(GOOD)]


async def watch_all(client: RawClient, commit: bytes, count: int) -> list[tuple[str, int]]:
    """WATCH_METRICS from 0 until `count` records came."""
    response = await client.call(WatchMetrics(key_hash=ADMIN, commit_id=commit))
    assert isinstance(response, Success), response
    got: list[tuple[str, int]] = []
    while len(got) < count:
        packet = await client.recv()
        assert isinstance(packet, Data), packet
        got += keys(decode_metrics_payload(packet.payload).records)
    return got


@pytest.mark.parametrize("first", ["append", "read"])
async def test_corrupt_metrics_file_refuses_appends_and_serves_its_valid_prefix(
    start_daemon: DaemonFactory, tmp_path: Path, first: str
) -> None:
    base = tmp_path / "experiments"
    data, _ = corrupt_metrics()
    path = make_experiment(base, COMMIT.hex(), data)
    make_experiment(base, OTHER.hex(), record(0, "x"))
    daemon = await start_daemon()
    client = await daemon.client()
    if first == "read":
        assert keys(await query_all(client, COMMIT)) == GOOD_KEYS

    for request in (
        log_metric(COMMIT, GOOD),
        log_metrics(COMMIT, range(GOOD, GOOD + 3)),
        log_metric(COMMIT, GOOD),
    ):
        await expect_error(client, request, ErrorCode.STORAGE_ERROR, "metrics file corrupt")
    assert path.read_bytes() == data  # nothing appended after bytes that do not parse
    assert torn_copies(path) == []

    assert keys(await query_all(client, COMMIT)) == GOOD_KEYS
    experiment = await call_json(client, GetExperiment(key_hash=ADMIN, commit_id=COMMIT))
    assert experiment["metrics_count"] == GOOD
    assert [(m["name"], m["step"]) for m in experiment["metrics"]] == GOOD_KEYS
    listed = await call_json(client, ListExperiments(key_hash=ADMIN))
    assert {row["commit_id"]: row["metrics_count"] for row in listed} == {
        COMMIT.hex(): GOOD,
        OTHER.hex(): 1,
    }
    watcher = await daemon.client()
    assert await watch_all(watcher, COMMIT, GOOD) == GOOD_KEYS
    await watcher.ws.close()
    # Other experiments are not affected.
    await ok(client, log_metric(OTHER, 1, "y"))
    assert keys(await query_all(client, OTHER)) == [("x", 0), ("y", 1)]
    await client.ws.close()


async def test_corruption_behind_an_open_experiment_is_refused_too(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    """More than 8 MiB that do not parse appear after the end the daemon knows (another
    writer, a bad disk) while it has the file open for appending: still corruption."""
    base = tmp_path / "experiments"
    path = make_experiment(base, COMMIT.hex(), PREFIX)
    daemon = await start_daemon()
    client = await daemon.client()
    await ok(client, log_metric(COMMIT, 5, "after"))
    written = path.read_bytes()
    garbage = b"\xff" * (MAX_TORN_BYTES + 1)
    with path.open("ab") as f:
        f.write(garbage)

    await expect_error(
        client, log_metric(COMMIT, 6, "more"), ErrorCode.STORAGE_ERROR, "metrics file corrupt"
    )
    assert path.stat().st_size == len(written) + len(garbage), "only fsck --repair truncates"
    assert torn_copies(path) == []
    assert keys(await query_all(client, COMMIT)) == [*PREFIX_KEYS, ("after", 5)]
    await client.ws.close()


async def test_fsck_reports_corruption_and_only_repair_truncates(tmp_path: Path) -> None:
    base = tmp_path / "experiments"
    data, end = corrupt_metrics()
    path = make_experiment(base, COMMIT.hex(), data)
    config = write_config(tmp_path / "config.yaml", raw_config(tmp_path))

    report = run_cli("fsck", "--base-path", str(base))
    assert report.returncode == 1, report.stdout + report.stderr
    assert report.stdout == (
        f"{COMMIT.hex()}: metrics.bin corrupt: {len(data) - end} bytes after {GOOD} valid "
        f"records ({end} bytes)\n1 experiments checked, 1 problem(s) found\n"
    )

    with daemons(tmp_path) as start:
        daemon = await start(config).wait_ready()
        client = await daemon.client()
        await expect_error(
            client, log_metric(COMMIT, GOOD), ErrorCode.STORAGE_ERROR, "metrics file corrupt"
        )
        assert keys(await query_all(client, COMMIT)) == GOOD_KEYS
        await client.ws.close()
        await daemon.shutdown()
        assert "corrupt" in daemon.log()
        assert path.read_bytes() == data

        repair = run_cli("fsck", "--base-path", str(base), "--repair")
        assert repair.returncode == 1, repair.stdout + repair.stderr
        assert f"repaired: truncated to {end} bytes" in repair.stdout
        assert path.read_bytes() == data[:end]
        assert [copy.read_bytes() for copy in torn_copies(path)] == [data[end:]]
        again = run_cli("fsck", "--base-path", str(base))
        assert (again.returncode, again.stdout) == (
            0,
            "1 experiments checked, 0 problem(s) found\n",
        )

        daemon = await start(config).wait_ready()
        client = await daemon.client()
        await ok(client, log_metric(COMMIT, GOOD, "good"))
        assert keys(await query_all(client, COMMIT)) == [*GOOD_KEYS, ("good", GOOD)]
        await client.ws.close()
        await daemon.shutdown()


# -- unreadable meta.bin ---------------------------------------------------------------------

OLDER = "aa" * 20
NEWER = "cc" * 20
DAMAGED = "00" * 20
"""Sorts first by commit hex: listed last anyway."""


def damage(directory: Path, kind: str) -> None:
    meta = directory / "meta.bin"
    whole = meta_bytes(DAMAGED)
    match kind:
        case "empty":
            meta.write_bytes(b"")
        case "too-short":
            meta.write_bytes(whole[:9])
        case "bad-version":
            meta.write_bytes(b"\x02" + whole[1:])
        case "string-past-end":
            meta.write_bytes(whole[:-3])
        case "missing":
            meta.unlink()
        case "directory":
            meta.unlink()
            meta.mkdir()


def row(
    commit: str, timestamp: int | None, user: str | None, count: int, damaged: str | None = None
) -> dict[str, object]:
    job = None if user is None else "job"
    return {
        "commit_id": commit,
        "timestamp": timestamp,
        "job_name": job,
        "user": user,
        "metrics_count": count,
        "damaged": damaged,
        "run": None,
    }


@pytest.mark.parametrize(
    "kind", ["empty", "too-short", "bad-version", "string-past-end", "missing", "directory"]
)
async def test_unreadable_meta_is_reported_listed_last_and_never_pruned(
    start_daemon: DaemonFactory, tmp_path: Path, kind: str
) -> None:
    base = tmp_path / "experiments"
    make_experiment(base, OLDER, meta=meta_bytes(OLDER, "admin", 1764000000))
    make_experiment(base, NEWER, meta=meta_bytes(NEWER, "alice", 1764000100))
    path = make_experiment(base, DAMAGED, b"".join(record(step) for step in range(3)))
    damage(path.parent, kind)
    damaged = bytes.fromhex(DAMAGED)
    reason = "meta.bin is a directory" if kind == "directory" else "metadata unreadable"
    daemon = await start_daemon()
    admin = await daemon.client()
    alice = await daemon.client()

    await expect_error(
        admin, GetExperiment(key_hash=ADMIN, commit_id=damaged), ErrorCode.STORAGE_ERROR, reason
    )
    assert await call_json(admin, ListExperiments(key_hash=ADMIN)) == [
        row(NEWER, 1764000100, "alice", 0),
        row(OLDER, 1764000000, "admin", 0),
        row(DAMAGED, None, None, 3, reason),
    ]
    # No owner: outside every `own` scope.
    assert await call_json(alice, ListExperiments(key_hash=ALICE)) == [
        row(NEWER, 1764000100, "alice", 0)
    ]
    await expect_error(
        alice, GetExperiment(key_hash=ALICE, commit_id=damaged), ErrorCode.PERMISSION_DENIED
    )
    await expect_error(alice, log_metric(damaged, 3, key=ALICE), ErrorCode.PERMISSION_DENIED)
    # Scope `all` can still read and append.
    assert keys(await query_all(admin, damaged)) == [("loss", step) for step in range(3)]
    await ok(admin, log_metric(damaged, 3))
    assert keys(await query_all(admin, damaged)) == [("loss", step) for step in range(4)]

    pruned = await call_json(
        admin, Prune(key_hash=ADMIN, prune_type=PruneType.KEEP_NEWEST, value=1)
    )
    assert pruned == {"pruned": [OLDER]}
    assert sorted(p.name for p in base.iterdir() if len(p.name) == 40) == [DAMAGED, NEWER]

    code, report = fsck_in_process(base)
    assert code == 1
    if kind == "directory":
        assert f"{DAMAGED}: damaged: meta.bin is a directory (left as it is)" in report
    else:
        assert f"{DAMAGED}: meta.bin unreadable" in report
    await admin.ws.close()
    await alice.ws.close()


# -- disk full -----------------------------------------------------------------------------

BIG = "x" * 235
"""A 256-byte record: 16 of them fill one 4 KiB page exactly."""
BIG_KEYS = [(BIG, step) for step in range(16)]


async def disk_full_scenario(
    client: RawClient, base: Path, make_full: Callable[[], None], free: Callable[[], None]
) -> None:
    """Refused appends leave the file exactly as it was; reads go on; freeing space heals."""
    path = base / COMMIT.hex() / "metrics.bin"
    await ok(client, CreateExperiment(key_hash=ADMIN, commit_id=COMMIT, job_name="d"))
    await ok(client, log_metrics(COMMIT, range(16), BIG))
    assert path.stat().st_size == 4096

    make_full()
    for request in (log_metric(COMMIT, 16), log_metrics(COMMIT, range(16, 18))):
        await expect_error(client, request, ErrorCode.DISK_FULL, "disk full")
    await expect_error(
        client,
        CreateExperiment(key_hash=ADMIN, commit_id=OTHER, job_name="o"),
        ErrorCode.DISK_FULL,
        "disk full",
    )
    assert sorted(p.name for p in base.iterdir() if not p.name.startswith(".fetchml")) == [
        COMMIT.hex()
    ]  # no half-made experiment
    assert path.stat().st_size == 4096

    # Reads go on.
    assert keys(await query_all(client, COMMIT)) == BIG_KEYS
    experiment = await call_json(client, GetExperiment(key_hash=ADMIN, commit_id=COMMIT))
    assert experiment["metrics_count"] == 16
    listed = await call_json(client, ListExperiments(key_hash=ADMIN))
    assert [r["metrics_count"] for r in listed] == [16]
    assert (await call_json(client, WhoAmI(key_hash=ADMIN)))["user"] == "admin"

    free()
    await ok(client, log_metric(COMMIT, 16))
    before = path.read_bytes()

    # A batch of which only a part fits: the part written is taken back.
    make_full()
    await expect_error(client, log_metrics(COMMIT, range(17, 57), BIG), ErrorCode.DISK_FULL)
    assert path.read_bytes() == before

    free()
    response = await ok(client, log_metrics(COMMIT, range(17, 57), BIG))
    assert response.message == "40"
    await ok(client, CreateExperiment(key_hash=ADMIN, commit_id=OTHER, job_name="o"))
    assert parses_whole(path)
    expected = [*BIG_KEYS, ("loss", 16), *((BIG, step) for step in range(17, 57))]
    assert keys(decode_records(path.read_bytes())) == expected
    assert keys(await query_all(client, COMMIT)) == expected


async def test_disk_full_on_a_tiny_tmpfs(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if not mount_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        base = disk / "experiments"
        raw = raw_config(tmp_path, storage={"base_path": str(base)})
        with daemons(tmp_path) as start:
            daemon = await start(write_config(tmp_path / "config.yaml", raw)).wait_ready()
            client = await daemon.client()
            fillers: list[Path] = []
            await disk_full_scenario(
                client, base, lambda: fillers.append(fill(disk)), lambda: fillers.pop().unlink()
            )
            await client.ws.close()
            await daemon.shutdown()
            assert "No space left on device" in daemon.log()
    finally:
        unmount(disk)


class FullDisk:
    """ENOSPC from the store's writes while `full`, after writing half of the data, as a
    filesystem that runs out in the middle of a write does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self._write_all = files.write_all
        monkeypatch.setattr(files, "write_all", self.write_all)

    def write_all(self, fd: int, data: bytes) -> None:
        if not self.full:
            return self._write_all(fd, data)
        self._write_all(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def set(self, full: bool) -> None:
        self.full = full


async def test_disk_full_injected(
    start_daemon: DaemonFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = FullDisk(monkeypatch)
    daemon = await start_daemon()
    client = await daemon.client()
    await disk_full_scenario(
        client, daemon.config.storage.base_path, lambda: disk.set(True), lambda: disk.set(False)
    )
    await client.ws.close()


async def test_disk_full_while_cutting_a_torn_tail(
    start_daemon: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recovery cannot write its copy: DISK_FULL, the file untouched; once there is
    space, the tail is cut with one copy of it, as if the first try never happened."""
    tail = TAILS["zero-blocks"]
    path = make_experiment(tmp_path / "experiments", COMMIT.hex(), PREFIX + tail)
    disk = FullDisk(monkeypatch)
    daemon = await start_daemon()
    client = await daemon.client()

    disk.set(True)
    await expect_error(client, log_metric(COMMIT, 5, "after"), ErrorCode.DISK_FULL, "disk full")
    assert path.read_bytes() == PREFIX + tail
    assert keys(await query_all(client, COMMIT)) == PREFIX_KEYS

    disk.set(False)
    await ok(client, log_metric(COMMIT, 5, "after"))
    assert keys(decode_records(path.read_bytes())) == [*PREFIX_KEYS, ("after", 5)]
    copies = torn_copies(path)
    assert [copy.stat().st_size for copy in copies] == [len(tail)], "a partial copy was left"
    assert [copy.read_bytes() for copy in copies] == [tail]
    await client.ws.close()


# -- permission denied -----------------------------------------------------------------------


async def read_only_scenario(
    client: RawClient, path: Path, deny: Callable[[], None], allow: Callable[[], None]
) -> None:
    """STORAGE_ERROR for writes while denied, reads and other work go on, then it heals."""
    before = path.read_bytes()
    deny()
    for request in (log_metric(COMMIT, 3), log_metrics(COMMIT, range(3, 5))):
        await expect_error(client, request, ErrorCode.STORAGE_ERROR, "storage error")
    assert path.read_bytes() == before
    assert keys(await query_all(client, COMMIT)) == [("loss", step) for step in range(3)]
    experiment = await call_json(client, GetExperiment(key_hash=ADMIN, commit_id=COMMIT))
    assert experiment["metrics_count"] == 3
    assert (await call_json(client, WhoAmI(key_hash=ADMIN)))["user"] == "admin"

    allow()
    await ok(client, log_metric(COMMIT, 3))
    assert keys(await query_all(client, COMMIT)) == [("loss", step) for step in range(4)]
    assert parses_whole(path)


async def test_read_only_data_dir_gets_storage_error(tmp_path: Path) -> None:
    """Root ignores file modes: a read-only bind mount of the data directory."""
    base = tmp_path / "experiments"
    path = make_experiment(base, COMMIT.hex(), b"".join(record(step) for step in range(3)))
    config = write_config(tmp_path / "config.yaml", raw_config(tmp_path))
    with daemons(tmp_path) as start:
        daemon = await start(config).wait_ready()
        client = await daemon.client()
        mounted = bind_readonly(base)
        if not mounted:
            pytest.skip("cannot make a read-only bind mount here (needs root and CAP_SYS_ADMIN)")
        try:
            await expect_error(
                client,
                CreateExperiment(key_hash=ADMIN, commit_id=OTHER, job_name="o"),
                ErrorCode.STORAGE_ERROR,
                "storage error",
            )
            await read_only_scenario(client, path, lambda: None, lambda: unmount(base))
        finally:
            unmount(base)
        await ok(client, CreateExperiment(key_hash=ADMIN, commit_id=OTHER, job_name="o"))
        await client.ws.close()
        await daemon.shutdown()


async def test_permission_denied_injected(
    start_daemon: DaemonFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same with os.open refusing to open metrics.bin for writing (EACCES)."""
    path = make_experiment(
        tmp_path / "experiments", COMMIT.hex(), b"".join(record(step) for step in range(3))
    )
    make_experiment(tmp_path / "experiments", OTHER.hex())
    denied = False
    real_open = os.open

    def deny_metrics(file: str | os.PathLike[str], flags: int, *args: int, **kw: int) -> int:
        writing = flags & (os.O_WRONLY | os.O_RDWR)
        if denied and writing and Path(file).name == "metrics.bin":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, flags, *args, **kw)

    def set_denied(value: bool) -> None:
        nonlocal denied
        denied = value

    monkeypatch.setattr(os, "open", deny_metrics)
    daemon = await start_daemon()
    client = await daemon.client()
    await read_only_scenario(client, path, lambda: set_denied(True), lambda: set_denied(False))
    await ok(client, log_metric(OTHER, 0))
    await client.ws.close()


# -- one daemon per data directory -----------------------------------------------------------


async def test_second_daemon_on_the_same_data_dir_fails_naming_the_first(tmp_path: Path) -> None:
    first_config = write_config(tmp_path / "first.yaml", raw_config(tmp_path))
    # Same data directory, everything else its own.
    second_raw = raw_config(
        tmp_path,
        storage={"jobs_db": str(tmp_path / "second.sqlite3")},
        logging={"audit_file": str(tmp_path / "second-audit.jsonl")},
    )
    second_config = write_config(tmp_path / "second.yaml", second_raw)
    with daemons(tmp_path) as start:
        first = await start(first_config).wait_ready()
        for config in (first_config, second_config):
            second = start(config)
            assert await second.wait_exit() != 0
            assert f"is in use by another fetchml-server (pid {first.pid})" in second.log()
            assert str(tmp_path / "experiments") in second.log()
            assert "listening on" not in second.log()
        assert first.running()
        client = await first.client()
        assert (await call_json(client, WhoAmI(key_hash=ADMIN)))["user"] == "admin"
        await client.ws.close()

        # A killed daemon's lock goes with it.
        first.kill()
        third: DaemonProcess = await start(second_config).wait_ready()
        client = await third.client()
        assert (await call_json(client, WhoAmI(key_hash=ADMIN)))["user"] == "admin"
        await client.ws.close()
        await third.shutdown()


def test_fsck_of_a_clean_tree_is_quiet(tmp_path: Path) -> None:
    base = tmp_path / "experiments"
    make_experiment(base, COMMIT.hex(), PREFIX)
    result = run_cli("fsck", "--base-path", str(base))
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "1 experiments checked, 0 problem(s) found\n",
        "",
    )
    assert (
        json.loads(run_cli("inspect", "--base-path", str(base), "--json").stdout)[COMMIT.hex()][
            "metrics_count"
        ]
        == 5
    )
