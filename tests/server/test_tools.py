"""`fetchml-server inspect` and `fsck` on real trees: the CLI as a subprocess, the
functions with their own output stream."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetchml.protocol.metrics import encode_record
from fetchml.protocol.records import Metadata, encode_metadata
from fetchml.server import tools
from fetchml.server.storage import ExperimentStore
from tests.support.experiments import GoTree

ROOT = Path(__file__).resolve().parents[2]
TS = 1795735109
COMMIT_A = "0123456789abcdef0123456789abcdef01234567"
COMMIT_B = "b" * 40


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "fetchml.server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def commit(n: int) -> str:
    return f"{n:040x}"


def rec(name: bytes, step: int = 0) -> bytes:
    return encode_record(TS, step, 0.5, name)


def make_experiment(base: Path, c: str, metrics: bytes | None, meta: bytes | None = None) -> Path:
    directory = base / c
    (directory / "files").mkdir(parents=True)
    if meta is None:
        meta = encode_metadata(Metadata(commit_id=c, timestamp=1764000000, job_name="j", user="u"))
    (directory / "meta.bin").write_bytes(meta)
    path = directory / "metrics.bin"
    if metrics is not None:
        path.write_bytes(metrics)
    return path


def fsck(base: Path, repair: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    return tools.fsck(base, repair, out=out), out.getvalue()


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_json_reads_a_go_tree_exactly(go_tree: GoTree) -> None:
    result = cli("inspect", "--base-path", str(go_tree.base), "--json")
    assert result.returncode == 1, result.stderr  # unreadable metadata, a damaged entry
    doc = json.loads(result.stdout)
    assert list(doc) == list(go_tree.expected)  # newest first, unreadable and damaged last
    assert doc == go_tree.expected
    for key in ("NaN", "Infinity", "-Infinity"):
        assert f'"value": "{key}"' in result.stdout


def test_inspect_json_one_commit(go_tree: GoTree) -> None:
    out = io.StringIO()
    assert tools.inspect(go_tree.base, COMMIT_B, True, out=out) == 0
    assert json.loads(out.getvalue()) == {COMMIT_B: go_tree.expected[COMMIT_B]}


def test_inspect_text(go_tree: GoTree) -> None:
    out = io.StringIO()
    assert tools.inspect(go_tree.base, None, False, out=out) == 1
    text = out.getvalue()
    headers = [line.split()[1] for line in text.splitlines() if line.startswith("experiment ")]
    assert headers == list(go_tree.expected)
    assert "job: resnet50-baseline  user: alice" in text
    assert text.count("metadata: unreadable") == 2
    assert text.endswith(
        f"experiment {'f' * 40}\n  damaged: experiment directory is a regular file\n  metrics: 0\n"
    )


@pytest.mark.parametrize("missing", ["e" * 40, "A" * 40, "../x", "README"])
def test_inspect_unknown_commit_exits_1(go_tree: GoTree, missing: str) -> None:
    result = cli("inspect", "--base-path", str(go_tree.base), missing, "--json")
    assert (result.returncode, result.stdout) == (1, "")
    assert "no experiment" in result.stderr


def test_commands_on_a_missing_directory_exit_2(tmp_path: Path) -> None:
    assert tools.inspect(tmp_path / "nope", None, True, out=io.StringIO()) == 2
    assert tools.fsck(tmp_path / "nope", False, out=io.StringIO()) == 2


# -- fsck -------------------------------------------------------------------------------------


async def test_fsck_clean_tree_exits_0(tmp_path: Path) -> None:
    async with ExperimentStore(tmp_path) as store:
        for n in range(1, 4):
            c = commit(n)
            await store.create(Metadata(commit_id=c, timestamp=1764000000 + n))
            if n > 1:
                await store.append(c, rec(b"loss") * n, n)
    (tmp_path / "README").write_text("ignored")
    result = cli("fsck", "--base-path", str(tmp_path))
    assert (result.returncode, result.stdout) == (0, "3 experiments checked, 0 problem(s) found\n")


def test_fsck_reports_go_tree_problems_and_repairs_the_tail(go_tree: GoTree) -> None:
    b_metrics = go_tree.base / COMMIT_B / "metrics.bin"
    before = b_metrics.read_bytes()
    tail = 21 + 30  # a trailing empty-name record, then zeros

    result = cli("fsck", "--base-path", str(go_tree.base))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"{COMMIT_B}: metrics.bin torn tail: {tail} bytes after 2 valid records (44 bytes)" in (
        lines
    )
    unreadable = [line for line in lines if "meta.bin unreadable" in line]
    assert [line.split(":")[0] for line in unreadable] == ["0" * 40, "d" * 40]
    damaged = f"{'f' * 40}: damaged: experiment directory is a regular file (left as it is)"
    assert damaged in lines
    assert lines[-1] == "6 experiments checked, 4 problem(s) found"
    assert b_metrics.read_bytes() == before  # reporting changes nothing
    assert not list(b_metrics.parent.glob("metrics.bin.torn-*"))

    result = cli("fsck", "--base-path", str(go_tree.base), "--repair")
    assert result.returncode == 1
    assert f"{COMMIT_B}: repaired: truncated to 44 bytes" in result.stdout
    assert b_metrics.read_bytes() == before[:44]
    [copy] = b_metrics.parent.glob("metrics.bin.torn-*")
    assert copy.read_bytes() == before[44:]

    # What is left is the unreadable metadata and the damaged entry, which fsck leaves.
    code, text = fsck(go_tree.base)
    assert code == 1
    assert "torn" not in text
    assert text.endswith("6 experiments checked, 3 problem(s) found\n")
    assert (go_tree.base / ("f" * 40)).is_file()


def test_fsck_repair_then_clean(tmp_path: Path) -> None:
    good = rec(b"a") + rec(b"", 1) + rec(b"b", 2)
    path = make_experiment(tmp_path, commit(1), good + rec(b"c")[:17])
    make_experiment(tmp_path, commit(2), good)
    make_experiment(tmp_path, commit(3), None)

    code, text = fsck(tmp_path)
    assert code == 1
    assert text.splitlines() == [
        f"{commit(1)}: metrics.bin torn tail: 17 bytes after 3 valid records ({len(good)} bytes)",
        "3 experiments checked, 1 problem(s) found",
    ]
    code, text = fsck(tmp_path, repair=True)
    assert code == 1
    assert "repaired" in text
    assert path.read_bytes() == good
    assert [p.read_bytes() for p in path.parent.glob("metrics.bin.torn-*")] == [rec(b"c")[:17]]
    assert fsck(tmp_path) == (0, "3 experiments checked, 0 problem(s) found\n")


def test_fsck_reports_unreadable_metadata(tmp_path: Path) -> None:
    make_experiment(tmp_path, commit(1), rec(b"a"), meta=b"\x01" + bytes(8) + b"\x28abc")
    make_experiment(tmp_path, commit(2), None, meta=b"")
    code, text = fsck(tmp_path, repair=True)
    assert code == 1
    assert text.splitlines() == [
        f"{commit(1)}: meta.bin unreadable (never pruned; not repairable here)",
        f"{commit(2)}: meta.bin unreadable (never pruned; not repairable here)",
        "2 experiments checked, 2 problem(s) found",
    ]


def test_fsck_clean_file_larger_than_the_read_chunk(tmp_path: Path) -> None:
    """32-byte records: one ends exactly on the 4 MiB scan chunk; the file is still clean."""
    record = rec(b"n" * 11)
    original = record * ((4 << 20) // len(record) + 10)
    path = make_experiment(tmp_path, commit(1), original)
    assert fsck(tmp_path, repair=True) == (0, "1 experiments checked, 0 problem(s) found\n")
    assert path.read_bytes() == original
