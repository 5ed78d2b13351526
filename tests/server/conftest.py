"""Fixtures for the store tests: a fixed umask and an experiment tree written "by Go".

The Go tree is built from raw bytes following docs/PROTOCOL.md section 1 (copied
here, never read from the document), so it does not depend on protocol.records.
"""

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.experiments import GoTree


@pytest.fixture(autouse=True)
def fixed_umask() -> Iterator[None]:
    """Modes are checked exactly, so do not depend on the caller's umask."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def go_record(timestamp: int, step: int, value: float | bytes, name: bytes) -> bytes:
    """[timestamp:u64][step:u32][value:f64][name:str8], big-endian; `value` may be raw bits."""
    bits = value if isinstance(value, bytes) else struct.pack(">d", value)
    return (
        timestamp.to_bytes(8, "big") + step.to_bytes(4, "big") + bits + bytes((len(name),)) + name
    )


def go_meta(timestamp: int, *fields: str, version: int = 1) -> bytes:
    """[version:u8][timestamp:i64][commit:str8][job:str8][user:str8]; trailing fields may be absent."""
    out = bytes((version,)) + timestamp.to_bytes(8, "big", signed=True)
    for text in fields:
        raw = text.encode()
        out += bytes((len(raw),)) + raw
    return out


COMMIT_A = "0123456789abcdef0123456789abcdef01234567"
COMMIT_B = "b" * 40
COMMIT_C = "c" * 40
COMMIT_D = "d" * 40
COMMIT_E = "0" * 40
COMMIT_F = "f" * 40

# PROTOCOL.md section 1 examples, verbatim.
META_A_HEX = (
    "0100000000692481002830313233343536373839616263646566303132333435363738396162636465663031"
    "323334353637117265736e657435302d626173656c696e6505616c696365"
)
LOSS_RECORD_HEX = "000000006b08be45000000003ff0000000000000046c6f7373"


def _metric(name: str, value: float | str, step: int, timestamp: int) -> dict[str, Any]:
    return {"name": name, "value": value, "step": step, "timestamp": timestamp}


def _experiment(
    commit: str,
    meta: tuple[int, str, str] | None,
    metrics: list[dict[str, Any]],
    damaged: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any]
    if meta is None:
        metadata = {"commit_id": commit, "timestamp": None, "job_name": None, "user": None}
    else:
        metadata = {"commit_id": commit, "timestamp": meta[0], "job_name": meta[1], "user": meta[2]}
    return {
        "metadata": metadata,
        "metrics": metrics,
        "metrics_count": len(metrics),
        "metrics_truncated": False,
        "run": None,
        "damaged": damaged,
    }


@pytest.fixture
def go_tree(tmp_path: Path) -> GoTree:
    """Several experiments as the Go manager would leave them, plus noise to ignore."""
    base = tmp_path / "go-experiments"
    base.mkdir()

    def experiment(commit: str, meta: bytes, metrics: bytes | None) -> None:
        directory = base / commit
        (directory / "files").mkdir(parents=True)
        (directory / "meta.bin").write_bytes(meta)
        if metrics is not None:
            (directory / "metrics.bin").write_bytes(metrics)

    # A: the documented meta.bin; NaN with a payload, +-Inf, Go's empty names
    # followed by a named record, a name cut inside a UTF-8 character.
    experiment(
        COMMIT_A,
        bytes.fromhex(META_A_HEX),
        bytes.fromhex(LOSS_RECORD_HEX)
        + go_record(1795735110, 1, bytes.fromhex("7ff8000000000001"), b"loss")
        + go_record(1795735111, 2, float("inf"), b"acc")
        + go_record(1795735112, 3, float("-inf"), b"acc")
        + go_record(1795735113, 4, 0.5, b"")
        + go_record(1795735113, 5, 0.25, b"")
        + go_record(1795735114, 6, 2.5, b"val_loss")
        + go_record(1795735115, 4294967295, -1.5, b"caf\xc3")
        + go_record(1795735116, 7, 1e300, "ünïcode".encode()),
    )
    # B: meta.bin without job and user; a trailing empty-name record and zeros (torn).
    experiment(
        COMMIT_B,
        go_meta(1764000100, COMMIT_B),
        go_record(1764000200, 0, 3.0, b"b")
        + go_record(1764000201, 1, -0.0, b"b")
        + go_record(1764000202, 2, 9.0, b"")
        + bytes(30),
    )
    # C: same timestamp as B (tie: commit ascending), job but no user, no metrics.bin.
    experiment(COMMIT_C, go_meta(1764000100, COMMIT_C, "only-job"), None)
    # D and E: unreadable meta.bin (bad version; too short), listed last by commit.
    experiment(
        COMMIT_D,
        go_meta(1764000999, COMMIT_D, "j", "u", version=2),
        go_record(1764001000, 0, 1.25, b"d"),
    )
    experiment(COMMIT_E, b"\x01\x00\x00\x00", b"")
    # Noise that is not an experiment.
    (base / "README").write_text("not an experiment\n")
    (base / "NOTES").mkdir()
    (base / ("A" * 40)).mkdir()
    (base / ("a" * 39)).mkdir()
    # F: a file named like an experiment is one, damaged.
    (base / COMMIT_F).write_bytes(go_meta(1764000000, COMMIT_F))

    expected = {
        COMMIT_B: _experiment(
            COMMIT_B,
            (1764000100, "", ""),
            [_metric("b", 3.0, 0, 1764000200), _metric("b", -0.0, 1, 1764000201)],
        ),
        COMMIT_C: _experiment(COMMIT_C, (1764000100, "only-job", ""), []),
        COMMIT_A: _experiment(
            COMMIT_A,
            (1764000000, "resnet50-baseline", "alice"),
            [
                _metric("loss", 1.0, 0, 1795735109),
                _metric("loss", "NaN", 1, 1795735110),
                _metric("acc", "Infinity", 2, 1795735111),
                _metric("acc", "-Infinity", 3, 1795735112),
                _metric("", 0.5, 4, 1795735113),
                _metric("", 0.25, 5, 1795735113),
                _metric("val_loss", 2.5, 6, 1795735114),
                _metric("caf\ufffd", -1.5, 4294967295, 1795735115),
                _metric("ünïcode", 1e300, 7, 1795735116),
            ],
        ),
        COMMIT_E: _experiment(COMMIT_E, None, [], "metadata unreadable"),
        COMMIT_D: _experiment(
            COMMIT_D, None, [_metric("d", 1.25, 0, 1764001000)], "metadata unreadable"
        ),
        COMMIT_F: _experiment(COMMIT_F, None, [], "experiment directory is a regular file"),
    }
    return GoTree(base, expected)
