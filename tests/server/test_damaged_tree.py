"""Damaged entries in the data directory: symlinked experiment directories, FIFOs, a
device, directories where files belong, an oversized meta.bin, names of experiments that
are not directories. LIST reports each with its reason and lists everything else as
usual; requests on one answer at once (STORAGE_ERROR naming the entry, or
PERMISSION_DENIED for scope `own`: a damaged experiment has no owner); nothing is
followed, truncated or written; inspect and fsck report each one and go on.

A daemon that waits on a FIFO never answers again, so every call has a deadline and the
daemon runs in its own process.
"""

import asyncio
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.exceptions import ConnectionClosed

import fetchml.server.files
import fetchml.server.tools
from fetchml.protocol.enums import ErrorCode
from fetchml.protocol.metrics import encode_record
from fetchml.protocol.records import Metadata, encode_metadata
from fetchml.protocol.requests import (
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    LogMetric,
    LogMetrics,
    MetricPoint,
    QueryMetrics,
    Request,
    WatchMetrics,
    WhoAmI,
)
from fetchml.protocol.responses import Data, Error, Response, Success
from fetchml.server.__main__ import main
from fetchml.server.entries import Damaged
from fetchml.server.files import DataDirBusy as Busy
from fetchml.server.files import lock_data_dir
from fetchml.server.storage import ExperimentStore
from tests.support.config import raw_config, write_config
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.keys import ADMIN, hash_of
from tests.support.wire import RawClient

ALICE = hash_of("alice")
TS = 1795735109
DEADLINE_S = 5.0
"""Per request: the old daemon never answered these at all."""
LIST_TARGET_S = 2.0

GOOD_ADMIN = "a0" * 20
GOOD_ALICE = "a1" * 20
TORN = "ff" * 20
"""Sorts after every damaged one: fsck gets there only by going on."""


def meta(commit: str, user: str, timestamp: int = 1764000000) -> bytes:
    return encode_metadata(Metadata(commit_id=commit, timestamp=timestamp, job_name="j", user=user))


def records(n: int, name: str = "loss") -> bytes:
    return b"".join(encode_record(TS, step, float(step), name.encode()) for step in range(n))


def experiment(directory: Path, user: str = "alice", metrics: bytes | None = None) -> Path:
    (directory / "files").mkdir(parents=True)
    (directory / "meta.bin").write_bytes(meta(directory.name, user))
    if metrics is not None:
        (directory / "metrics.bin").write_bytes(metrics)
    return directory


def _device(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers


# Each kind: how to make it at base/<commit> (outside: a directory beside the tree),
# the reason LIST gives, and whether metrics.bin stays usable (only meta.bin is damaged).
KINDS: dict[str, tuple[Callable[[Path, Path], Any], str, bool]] = {
    "dir-symlink-inside": (
        lambda d, out: d.symlink_to(d.parent / GOOD_ADMIN),
        "experiment directory is a symlink",
        False,
    ),
    "dir-symlink-outside": (
        lambda d, out: d.symlink_to(experiment(out / d.name, metrics=records(2))),
        "experiment directory is a symlink",
        False,
    ),
    "dir-symlink-dangling": (
        lambda d, out: d.symlink_to(out / "nowhere"),
        "experiment directory is a symlink",
        False,
    ),
    "dir-fifo": (lambda d, out: os.mkfifo(d), "experiment directory is a FIFO", False),
    "dir-file": (
        lambda d, out: d.write_bytes(meta(d.name, "alice")),
        "experiment directory is a regular file",
        False,
    ),
    "metrics-fifo": (
        lambda d, out: os.mkfifo(experiment(d) / "metrics.bin"),
        "metrics.bin is a FIFO",
        False,
    ),
    "metrics-symlink-inside": (
        lambda d, out: (experiment(d) / "metrics.bin").symlink_to(
            d.parent / GOOD_ADMIN / "metrics.bin"
        ),
        "metrics.bin is a symlink",
        False,
    ),
    "metrics-symlink-outside": (
        lambda d, out: (experiment(d) / "metrics.bin").symlink_to(write(out / "m.bin", records(2))),
        "metrics.bin is a symlink",
        False,
    ),
    "metrics-directory": (
        lambda d, out: (experiment(d) / "metrics.bin").mkdir(),
        "metrics.bin is a directory",
        False,
    ),
    "metrics-device": (
        lambda d, out: _device(experiment(d) / "metrics.bin"),
        "metrics.bin is a character device",
        False,
    ),
    "meta-fifo": (
        lambda d, out: os.mkfifo(meta_gone(experiment(d, metrics=records(2)))),
        "meta.bin is a FIFO",
        True,
    ),
    "meta-symlink": (
        lambda d, out: meta_gone(experiment(d, metrics=records(2))).symlink_to(
            write(out / "meta.bin", meta(d.name, "alice"))
        ),
        "meta.bin is a symlink",
        True,
    ),
    "meta-too-large": (
        lambda d, out: meta_gone(experiment(d, metrics=records(2))).write_bytes(
            meta(d.name, "alice").ljust(2048, b"\0")
        ),
        "meta.bin is too large (2048 bytes)",
        True,
    ),
}
COMMITS = {kind: f"d{i:x}" * 20 for i, kind in enumerate(KINDS)}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def meta_gone(directory: Path) -> Path:
    """Remove meta.bin; returns its path, to put something else there."""
    (directory / "meta.bin").unlink()
    return directory / "meta.bin"


NO_DEVICE = "cannot make a device node here (needs CAP_MKNOD)"


def build(root: Path, kinds: list[str]) -> tuple[Path, Path, list[str]]:
    """The tree: two good experiments, then one damaged experiment of each kind that
    this machine can make (returned with the base and the outside directory)."""
    base, outside = root / "experiments", root / "outside"
    base.mkdir(parents=True)
    outside.mkdir()
    experiment(base / GOOD_ADMIN, "admin", records(3))
    experiment(base / GOOD_ALICE, "alice", records(2, "acc"))
    made = []
    for kind in kinds:
        try:
            KINDS[kind][0](base / COMMITS[kind], outside)
            made.append(kind)
        except PermissionError:
            assert kind == "metrics-device"
            shutil.rmtree(base / COMMITS[kind])
    return base, outside, made


def snapshot(*roots: Path) -> dict[str, Any]:
    """Every entry under `roots` by lstat: kind, symlink target, regular files' bytes.
    Nothing but regular files is opened."""
    out: dict[str, Any] = {}
    for root in roots:
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(directory, name)
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    out[str(path)] = ("link", os.readlink(path))
                elif stat.S_ISREG(mode):
                    out[str(path)] = ("file", path.read_bytes())
                else:
                    out[str(path)] = (stat.S_IFMT(mode),)
    out.pop(str(roots[0] / ".fetchml-server.lock"), None)
    return out


# -- a daemon on the tree ------------------------------------------------------------------


class Tree:
    def __init__(self, root: Path) -> None:
        self.base, self.outside, self.kinds = build(root, list(KINDS))
        config = write_config(root / "config.yaml", raw_config(root))
        self.daemon = DaemonProcess(config, root / "daemon.log").start()

    async def client(self) -> RawClient:
        return await asyncio.wait_for(self.daemon.client(), DEADLINE_S)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    t = Tree(tmp_path_factory.mktemp("damaged"))
    yield t
    t.daemon.reap()


T = TypeVar("T")


async def timed(what: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await asyncio.wait_for(what, DEADLINE_S)
    return result, time.perf_counter() - started


async def call(client: RawClient, request: Request) -> Response:
    return (await timed(client.call(request)))[0]


async def error(client: RawClient, request: Request, code: ErrorCode, message: str = "") -> None:
    response = await call(client, request)
    assert isinstance(response, Error), response
    assert response.code == code, response
    if message:
        assert response.message == message, response


async def listing(client: RawClient, key: bytes) -> tuple[list[dict[str, Any]], float]:
    response, seconds = await timed(client.call(ListExperiments(key_hash=key)))
    assert isinstance(response, Data), response
    return json.loads(response.payload), seconds


def row(commit: str, user: str | None, count: int, damaged: str | None) -> dict[str, Any]:
    return {
        "commit_id": commit,
        "timestamp": None if user is None else 1764000000,
        "job_name": None if user is None else "j",
        "user": user,
        "metrics_count": count,
        "damaged": damaged,
        "run": None,
    }


async def test_list_reports_each_damaged_experiment_and_the_rest_as_usual(tree: Tree) -> None:
    admin = await tree.client()
    rows, seconds = await listing(admin, ADMIN)
    print(f"LIST scope all over {len(tree.kinds)} damaged experiments: {seconds * 1000:.1f} ms")
    assert seconds < LIST_TARGET_S
    damaged = sorted(
        (COMMITS[k], 2 if KINDS[k][2] else 0, KINDS[k][1]) for k in tree.kinds
    )  # no owner: last, by commit
    assert rows == [
        row(GOOD_ADMIN, "admin", 3, None),
        row(GOOD_ALICE, "alice", 2, None),
        *(row(c, None, n, why) for c, n, why in damaged),
    ]
    alice = await tree.client()
    rows, seconds = await listing(alice, ALICE)
    print(f"LIST scope own: {seconds * 1000:.1f} ms")
    assert seconds < LIST_TARGET_S
    assert rows == [row(GOOD_ALICE, "alice", 2, None)]
    await admin.ws.close()
    await alice.ws.close()


@pytest.mark.parametrize("kind", list(KINDS))
async def test_requests_on_a_damaged_experiment_answer_at_once(tree: Tree, kind: str) -> None:
    if kind not in tree.kinds:
        pytest.skip(NO_DEVICE)
    _, reason, metrics_usable = KINDS[kind]
    commit = bytes.fromhex(COMMITS[kind])
    before = snapshot(tree.base, tree.outside)
    admin, alice, other = await tree.client(), await tree.client(), await tree.client()

    # No owner: outside every scope `own`, whatever meta.bin says.
    for request in (
        GetExperiment(key_hash=ALICE, commit_id=commit),
        QueryMetrics(key_hash=ALICE, commit_id=commit),
        LogMetric(key_hash=ALICE, commit_id=commit, step=0, value=1.0, name="x"),
    ):
        await error(alice, request, ErrorCode.PERMISSION_DENIED)
    await error(
        admin, GetExperiment(key_hash=ADMIN, commit_id=commit), ErrorCode.STORAGE_ERROR, reason
    )
    await error(
        admin,
        CreateExperiment(key_hash=ADMIN, commit_id=commit, job_name="j"),
        ErrorCode.RESOURCE_ALREADY_EXISTS,
    )
    query = QueryMetrics(key_hash=ADMIN, commit_id=commit)
    if metrics_usable:  # a damaged meta.bin is an unreadable one: its metrics still serve
        assert isinstance(await call(admin, query), Data)
    else:
        await error(admin, query, ErrorCode.STORAGE_ERROR, reason)
        for log in (
            LogMetric(key_hash=ADMIN, commit_id=commit, step=0, value=1.0, name="x"),
            LogMetrics(key_hash=ADMIN, commit_id=commit, metrics=(MetricPoint(0, 1.0, "x"),)),
        ):
            await error(admin, log, ErrorCode.STORAGE_ERROR, reason)
        # A watch is accepted, then closed naming the entry.
        assert isinstance(
            await call(admin, WatchMetrics(key_hash=ADMIN, commit_id=commit)), Success
        )
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(admin.recv(), DEADLINE_S)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, reason)
    assert isinstance(await call(other, WhoAmI(key_hash=ADMIN)), Data)
    assert snapshot(tree.base, tree.outside) == before, "a damaged entry was changed"
    for client in (admin, alice, other):
        await client.ws.close()


async def test_logging_to_a_fifo_never_blocks_the_daemon(tree: Tree) -> None:
    """More than a pipe holds (64 KiB), pipelined: the old daemon wrote into the FIFO
    until it blocked, on the event loop."""
    commit = bytes.fromhex(COMMITS["metrics-fifo"])
    points = tuple(MetricPoint(step, 1.0, "loss") for step in range(1000))
    logger, other = await tree.client(), await tree.client()
    batches = 4  # 25 bytes a record: about 100 KB
    for _ in range(batches):
        await logger.send(LogMetrics(key_hash=ADMIN, commit_id=commit, metrics=points))
    response, seconds = await timed(other.call(WhoAmI(key_hash=ADMIN)))
    print(f"WHOAMI beside {batches} LOG_METRICS to a FIFO: {seconds * 1000:.1f} ms")
    assert isinstance(response, Data) and seconds < LIST_TARGET_S
    for _ in range(batches):
        answer = await asyncio.wait_for(logger.recv(), DEADLINE_S)
        assert isinstance(answer, Error), answer
        assert (answer.code, answer.message) == (ErrorCode.STORAGE_ERROR, "metrics.bin is a FIFO")
    assert stat.S_ISFIFO((tree.base / COMMITS["metrics-fifo"] / "metrics.bin").lstat().st_mode)
    await logger.ws.close()
    await other.ws.close()


# -- the store and the lock, in process ------------------------------------------------------


async def test_metadata_is_never_written_over_a_damaged_entry(tmp_path: Path) -> None:
    base, outside, _ = build(tmp_path, ["meta-fifo", "dir-symlink-outside"])
    before = snapshot(base, outside)
    async with ExperimentStore(base) as store:
        for kind in ("meta-fifo", "dir-symlink-outside"):
            commit = COMMITS[kind]
            new = Metadata(commit_id=commit, timestamp=1, job_name="renamed", user="admin")
            with pytest.raises(Damaged, match=re.escape(KINDS[kind][1])):
                await store.write_metadata(new)
    assert snapshot(base, outside) == before


def test_a_damaged_lock_file_stops_the_daemon_at_start(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".fetchml-server.lock")
    with pytest.raises(Busy, match=r"cannot be locked: \.fetchml-server\.lock is a FIFO"):
        lock_data_dir(tmp_path)


# -- inspect and fsck ---------------------------------------------------------------------------


def damaged_tree(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Every kind, plus a torn tail after all of them."""
    base, outside, kinds = build(tmp_path, list(KINDS))
    experiment(base / TORN, "admin", records(2) + records(1)[:-2])
    return base, outside, kinds


def test_fsck_reports_each_damaged_entry_goes_on_and_never_repairs_one(tmp_path: Path) -> None:
    base, outside, kinds = damaged_tree(tmp_path)
    lines = [
        f"{COMMITS[k]}: damaged: {KINDS[k][1]} (left as it is)"
        for k in sorted(kinds, key=COMMITS.__getitem__)
    ]
    torn = f"{TORN}: metrics.bin torn tail: 23 bytes after 2 valid records (50 bytes)"
    summary = f"{len(kinds) + 3} experiments checked, {len(kinds) + 1} problem(s) found"

    result = run_cli("fsck", "--base-path", str(base), timeout=20)
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [*lines, torn, summary]

    before = snapshot(base, outside)
    repaired = run_cli("fsck", "--base-path", str(base), "--repair", timeout=20)
    assert repaired.returncode == 1, repaired.stderr
    assert f"{TORN}: repaired: truncated to 50 bytes" in repaired.stdout
    after = snapshot(base, outside)
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert {Path(p).parent.name for p in changed} == {TORN}, "only the torn tail is cut"


def test_inspect_reports_each_damaged_entry_and_goes_on(tmp_path: Path) -> None:
    base, _, kinds = damaged_tree(tmp_path)
    result = run_cli("inspect", "--base-path", str(base), "--json", timeout=20)
    assert (result.returncode, result.stderr) == (1, "")
    doc = json.loads(result.stdout)
    assert {c: (d["damaged"], d["metrics_count"]) for c, d in doc.items()} == {
        GOOD_ADMIN: (None, 3),
        GOOD_ALICE: (None, 2),
        TORN: (None, 2),
        **{COMMITS[k]: (KINDS[k][1], 2 if KINDS[k][2] else 0) for k in kinds},
    }
    assert [m["step"] for m in doc[GOOD_ADMIN]["metrics"]] == [0, 1, 2]

    one = run_cli("inspect", "--base-path", str(base), COMMITS["dir-fifo"], timeout=20)
    assert one.returncode == 1, one.stderr
    assert "  damaged: experiment directory is a FIFO\n" in one.stdout
    clean = run_cli("inspect", "--base-path", str(base), GOOD_ADMIN, timeout=20)
    assert clean.returncode == 0, clean.stderr


def test_a_failure_of_the_tool_itself_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 means "problems found"; a data directory that cannot be read is not one."""
    assert run_cli("fsck", "--base-path", str(tmp_path / "missing")).returncode == 2
    base, _, _ = damaged_tree(tmp_path)
    real = os.scandir

    def denied(path: Any = ".") -> Any:  # root reads anything: refuse the way a mode would
        if Path(path) == base:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(fetchml.server.files.os, "scandir", denied)  # type: ignore[attr-defined]
    for argv in (["fsck", "--base-path", str(base)], ["inspect", "--base-path", str(base)]):
        assert main(argv) == 2
        assert "failed: [Errno 13] Permission denied" in capsys.readouterr().err

    def bug(base: Path) -> list[str]:
        raise ValueError("a bug")

    monkeypatch.setattr(fetchml.server.tools, "list_commits", bug)
    assert main(["fsck", "--base-path", str(base)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: fsck failed: a bug\n")
