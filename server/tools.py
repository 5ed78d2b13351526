"""Operator commands that work on a data directory without the daemon: inspect, fsck."""

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from protocol.records import decode_records

from .files import (
    COMMIT_RE,
    MAX_TORN_BYTES,
    METRICS,
    DataDirBusy,
    cut_tail,
    list_commits,
    lock_data_dir,
    read_metadata,
    scan_file,
)
from .storage import ExperimentInfo, sort_experiments
from .views import experiment_json


def _commits(base: Path) -> list[str]:
    return sorted(
        e.name
        for e in os.scandir(base)
        if COMMIT_RE.match(e.name) and e.is_dir(follow_symlinks=False)
    )


def _valid_prefix(path: Path) -> tuple[bytes, int, int]:
    """(valid prefix bytes, record count, file size); empty when there is no file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return b"", 0, 0
    try:
        result = scan_file(fd)
        return os.pread(fd, result.end, 0), result.records, result.size
    finally:
        os.close(fd)


def inspect(base: Path, commit: str | None, as_json: bool, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if not base.is_dir():
        print(f"error: {base} is not a directory", file=sys.stderr)
        return 2
    commits = [commit] if commit else list_commits(base)
    if commit and (not COMMIT_RE.match(commit) or not (base / commit).is_dir()):
        print(f"error: no experiment {commit} in {base}", file=sys.stderr)
        return 1
    infos = []
    records_of: dict[str, Any] = {}
    for c in commits:
        data, count, _ = _valid_prefix(base / c / METRICS)
        records_of[c] = decode_records(data)
        infos.append(ExperimentInfo(c, read_metadata(base / c), count))
    infos = sort_experiments(infos)
    if as_json:
        doc = {
            i.commit: experiment_json(
                i.commit, i.meta, records_of[i.commit], i.metrics_count, False
            )
            for i in infos
        }
        json.dump(doc, out, indent=2, allow_nan=False)
        out.write("\n")
        return 0
    for i in infos:
        out.write(f"experiment {i.commit}\n")
        if i.meta is None:
            out.write("  metadata: unreadable\n")
        else:
            created = datetime.fromtimestamp(i.meta.timestamp, UTC).isoformat()
            out.write(f"  job: {i.meta.job_name}  user: {i.meta.user}  created: {created}\n")
        out.write(f"  metrics: {i.metrics_count}\n")
        for index, r in enumerate(records_of[i.commit]):
            out.write(
                f"  {index:>8}  step {r.step:<10} {r.name:<24} {r.value!r:<24} t={r.timestamp}\n"
            )
    return 0


def fsck(base: Path, repair: bool, out: TextIO | None = None) -> int:
    """Report torn tails, corruption and unreadable metadata; exit 1 when any is found."""
    out = out or sys.stdout
    if not base.is_dir():
        print(f"error: {base} is not a directory", file=sys.stderr)
        return 2
    lock = None
    if repair:  # never cut a file a running daemon appends to
        try:
            lock = lock_data_dir(base)
        except DataDirBusy as exc:
            print(f"error: {exc}: stop it before --repair", file=sys.stderr)
            return 2
    try:
        return _fsck(base, repair, out)
    finally:
        if lock is not None:
            os.close(lock)


def _fsck(base: Path, repair: bool, out: TextIO) -> int:
    problems = 0
    commits = list_commits(base)
    for commit in commits:
        directory = base / commit
        if read_metadata(directory) is None:
            problems += 1
            out.write(f"{commit}: meta.bin unreadable (never pruned; not repairable here)\n")
        path = directory / METRICS
        if not path.exists():
            continue
        fd = os.open(path, os.O_RDWR if repair else os.O_RDONLY)
        try:
            result = scan_file(fd)
            remainder = result.size - result.end
            if not remainder:
                continue
            problems += 1
            kind = "corrupt" if remainder > MAX_TORN_BYTES else "torn tail"
            out.write(
                f"{commit}: metrics.bin {kind}: {remainder} bytes after {result.records} "
                f"valid records ({result.end} bytes)\n"
            )
            if repair:
                copy = cut_tail(fd, path, result.end, result.size)
                out.write(
                    f"{commit}: repaired: truncated to {result.end} bytes, copy in {copy.name}\n"
                )
        finally:
            os.close(fd)
    out.write(f"{len(commits)} experiments checked, {problems} problem(s) found\n")
    return 1 if problems else 0
