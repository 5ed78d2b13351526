"""Operator commands that work on a data directory without the daemon: inspect, fsck.

Both report every bad entry and go on; they return 0 when everything is clean, 1 when
they found problems (`__main__` makes a failure of the tool itself 2).
"""

import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from fetchml.protocol import shapes
from fetchml.protocol.metrics import decode_records

from . import indexer, sidecar
from .entries import Damaged, open_entry
from .files import (
    COMMIT_RE,
    MAX_TORN_BYTES,
    METRICS,
    UNREADABLE,
    DataDirBusy,
    cut_tail,
    fsync_dir,
    list_commits,
    load_metadata,
    lock_data_dir,
    scan_file,
)
from .rundoc import RUN, read_document
from .storage import ExperimentInfo, sort_experiments


def _valid_prefix(directory: Path) -> tuple[bytes, int, str | None]:
    """(valid prefix bytes, record count, what its sidecars hold) of metrics.bin; empty
    when there is no file."""
    try:
        fd = open_entry(directory, METRICS, os.O_RDONLY)
    except FileNotFoundError:
        return b"", 0, None
    try:
        result = scan_file(fd)
        return os.pread(fd, result.end, 0), result.records, _sidecars(directory, fd, result.end)
    finally:
        os.close(fd)


def _sidecars(directory: Path, fd: int, end: int) -> str | None:
    cp, problem = sidecar.audit(directory, fd, end)
    if problem:
        return f"ignored ({problem}): rebuilt when needed"
    if cp is None:
        return None
    return f"{cp.count} records ({cp.end} bytes), {len(cp.names)} names"


def _load(directory: Path) -> tuple[ExperimentInfo, bytes, str | None]:
    meta, damaged = load_metadata(directory)
    sidecars = None
    try:
        data, count, sidecars = _valid_prefix(directory)
    except (Damaged, OSError) as exc:
        data, count = b"", 0
        if not damaged:
            damaged = (
                exc.message
                if isinstance(exc, Damaged)
                else f"metrics.bin unreadable ({exc.strerror})"
            )
    return ExperimentInfo(directory.name, meta, count, damaged), data, sidecars


def inspect(base: Path, commit: str | None, as_json: bool, out: TextIO | None = None) -> int:
    """Print experiments; 1 when one is damaged or its metadata unreadable."""
    out = out or sys.stdout
    if not base.is_dir():
        print(f"error: {base} is not a directory", file=sys.stderr)
        return 2
    if commit and (not COMMIT_RE.match(commit) or not os.path.lexists(base / commit)):
        print(f"error: no experiment {commit} in {base}", file=sys.stderr)
        return 1
    loaded = [_load(base / c) for c in ([commit] if commit else list_commits(base))]
    data_of = {info.commit: data for info, data, _ in loaded}
    sidecars_of = {info.commit: sidecars for info, _, sidecars in loaded}
    infos = sort_experiments([info for info, _, _ in loaded])
    code = 1 if any(i.damaged for i in infos) else 0
    if as_json:
        doc = {
            i.commit: shapes.experiment(
                commit_id=i.commit,
                **shapes.meta_fields(i.meta),
                metrics=decode_records(data_of[i.commit]),
                metrics_count=i.metrics_count,
                metrics_truncated=False,
                run=read_document(base / i.commit).doc,
            )
            | {"damaged": i.damaged}
            for i in infos
        }
        json.dump(doc, out, indent=2, allow_nan=False)
        out.write("\n")
        return code
    for i in infos:
        out.write(f"experiment {i.commit}\n")
        if i.meta is not None:
            created = datetime.fromtimestamp(i.meta.timestamp, UTC).isoformat()
            out.write(f"  job: {i.meta.job_name}  user: {i.meta.user}  created: {created}\n")
        if i.damaged == UNREADABLE:
            out.write("  metadata: unreadable\n")
        elif i.damaged:
            out.write(f"  damaged: {i.damaged}\n")
        out.write(f"  metrics: {i.metrics_count}\n")
        if sidecars_of[i.commit]:
            out.write(f"  sidecars: {sidecars_of[i.commit]}\n")
        for index, r in enumerate(decode_records(data_of[i.commit])):
            out.write(
                f"  {index:>8}  step {r.step:<10} {r.name:<24} {r.value!r:<24} t={r.timestamp}\n"
            )
    return code


def fsck(base: Path, repair: bool, out: TextIO | None = None) -> int:
    """Report damaged entries, torn tails, corruption, unreadable metadata and unreadable
    run documents; 1 when any is found. `repair` cuts torn and corrupt tails (keeping a
    copy) and moves an unreadable run.json aside, nothing else."""
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
        commits = list_commits(base)
        problems = sum(
            _check(base / commit, repair, out) + _check_run(base / commit, repair, out)
            for commit in commits
        )
        out.write(f"{len(commits)} experiments checked, {problems} problem(s) found\n")
        return 1 if problems else 0
    finally:
        if lock is not None:
            os.close(lock)


def _check(directory: Path, repair: bool, out: TextIO) -> int:
    """Report what is wrong with one experiment; returns how many problems."""
    commit = directory.name
    problems = 0
    _, damaged = load_metadata(directory)
    if damaged == UNREADABLE:
        problems += 1
        out.write(f"{commit}: meta.bin unreadable (never pruned; not repairable here)\n")
    elif damaged:
        problems += 1
        out.write(f"{commit}: damaged: {damaged} (left as it is)\n")
    path = directory / METRICS
    try:
        fd = open_entry(directory, METRICS, os.O_RDWR if repair else os.O_RDONLY)
    except (FileNotFoundError, Damaged):  # no metrics yet, or reported above
        return problems
    except OSError as exc:
        out.write(f"{commit}: metrics.bin cannot be opened: {exc.strerror}\n")
        return problems + 1
    try:
        result = scan_file(fd)
        remainder = result.size - result.end
        if remainder:
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
    except OSError as exc:
        out.write(f"{commit}: metrics.bin cannot be read or repaired: {exc.strerror}\n")
        os.close(fd)
        return problems + 1
    try:
        return problems + _check_sidecars(directory, fd, result.end, repair, out)
    finally:
        os.close(fd)


def _check_sidecars(directory: Path, fd: int, end: int, repair: bool, out: TextIO) -> int:
    """Stale or damaged sidecars: reported; with `repair`, rebuilt."""
    _, problem = sidecar.audit(directory, fd, end)
    if problem is None:
        return 0
    commit = directory.name
    out.write(f"{commit}: sidecars stale or damaged: {problem} (the daemon ignores them)\n")
    if repair:
        try:
            cp, _ = indexer.extend(directory, fd, None, end)
        except (OSError, Damaged, indexer.TooManyNames) as exc:
            out.write(f"{commit}: sidecars cannot be rebuilt: {exc}\n")
            return 1
        out.write(f"{commit}: repaired: sidecars rebuilt ({cp.count} records)\n")
    return 1


def _check_run(directory: Path, repair: bool, out: TextIO) -> int:
    """An unreadable run.json: reported; with `repair`, renamed run.json.bad-<unix seconds>."""
    if directory.is_symlink() or not directory.is_dir():  # reported as damaged
        return 0
    if not read_document(directory).unreadable:
        return 0
    commit = directory.name
    out.write(f"{commit}: {RUN} unreadable (listed as null, UPDATE_RUN refused)\n")
    if repair:
        bad = directory / f"{RUN}.bad-{int(time.time())}"
        n = 2
        while os.path.lexists(bad):
            bad = directory / f"{RUN}.bad-{int(time.time())}-{n}"
            n += 1
        try:
            os.rename(directory / RUN, bad)
            fsync_dir(directory)
        except OSError as exc:
            out.write(f"{commit}: {RUN} cannot be moved aside: {exc.strerror}\n")
            return 1
        out.write(f"{commit}: repaired: {RUN} moved to {bad.name}\n")
    return 1
