"""Commits, and experiment trees and metrics.bin files written by the tests themselves."""

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fetchml.protocol.metrics import MetricRecord, decode_records, encode_record, scan
from fetchml.protocol.records import Metadata, encode_metadata

STAMP = 1795735109
"""A plausible record timestamp for records the tests write themselves."""


def commit_id(label: str) -> bytes:
    """A 20-byte commit ID derived from a label."""
    return hashlib.sha1(label.encode()).digest()


def commit_of(label: str) -> str:
    """A deterministic 40-hex commit per label (`commit_id(label).hex()`)."""
    return hashlib.sha1(label.encode()).hexdigest()


def by_byte(n: int) -> bytes:
    """A commit ID whose hex order is its byte value's order."""
    return bytes([n]) * 20


def record(step: int, name: str = "loss", value: float = 1.0, timestamp: int = STAMP) -> bytes:
    return encode_record(timestamp, step, value, name.encode())


def meta_bytes(commit: str, user: str = "admin", timestamp: int = 1764000000) -> bytes:
    return encode_metadata(
        Metadata(commit_id=commit, timestamp=timestamp, job_name="job", user=user)
    )


def make_experiment(
    base: Path, commit: str, metrics: bytes | None = None, meta: bytes | None = None
) -> Path:
    """An experiment directory as the Go manager leaves it; returns its metrics.bin path."""
    directory = base / commit
    (directory / "files").mkdir(mode=0o750, parents=True)
    (directory / "meta.bin").write_bytes(meta_bytes(commit) if meta is None else meta)
    path = directory / "metrics.bin"
    if metrics is not None:
        path.write_bytes(metrics)
    return path


def write_experiment(
    base: Path,
    cid: bytes,
    *,
    timestamp: int,
    user: str = "alice",
    job_name: str = "seeded",
    records: Iterable[tuple[int, int, float, str]] = (),
    meta: bytes | None = None,
) -> Path:
    """An experiment directory written before the daemon starts (controlled timestamps)."""
    path = base / cid.hex()
    (path / "files").mkdir(parents=True)
    if meta is None:
        meta = encode_metadata(
            Metadata(commit_id=cid.hex(), timestamp=timestamp, job_name=job_name, user=user)
        )
    (path / "meta.bin").write_bytes(meta)
    data = b"".join(
        encode_record(ts, step, value, name.encode()) for ts, step, value, name in records
    )
    if data:
        (path / "metrics.bin").write_bytes(data)
    return path


def torn_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.torn-*"))


# -- metrics.bin -------------------------------------------------------------------------


def file_records(path: Path) -> list[MetricRecord]:
    """The records of a metrics file's valid prefix (none when there is no file)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return decode_records(data[: scan(data).end])


def valid_prefix_end(path: Path) -> int:
    return scan(path.read_bytes()).end


def metrics_path(base: Path, commit: bytes) -> Path:
    return base / commit.hex() / "metrics.bin"


# -- large files, written in one go with numpy (every name of one length: one layout) --


def big_metrics(records: int, names: tuple[bytes, ...] = (b"loss", b"grad")) -> bytes:
    """`records` records cycling through `names`: step i, value sin(i / 1000)."""
    (length,) = {len(name) for name in names}
    layout = np.dtype(
        [("ts", ">u8"), ("step", ">u4"), ("value", ">f8"), ("len", "u1"), ("name", f"S{length}")]
    )
    steps = np.arange(records)
    table = np.zeros(records, layout)
    table["ts"] = STAMP
    table["step"] = steps
    table["value"] = np.sin(steps / 1000)
    table["len"] = length
    table["name"] = np.array(names)[steps % len(names)]
    data = table.tobytes()
    head = b"".join(
        encode_record(STAMP, i, float(np.sin(i / 1000)), names[i % len(names)])
        for i in range(min(records, 10))
    )
    assert data.startswith(head)
    return data


def big_experiment(base: Path, commit: str, records: int, user: str) -> Path:
    return make_experiment(base, commit, big_metrics(records), meta_bytes(commit, user=user))


class GoTree(NamedTuple):
    base: Path
    expected: dict[str, Any]
    """What `inspect --json` must print, in order (newest first, unreadable and damaged last)."""
