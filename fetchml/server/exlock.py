"""The experiment's flock: what every process that changes one experiment directory
(daemons sharing the data directory, fetch_ml's Go writer) agrees on.

An exclusive flock on metrics.bin is held by each step that changes the experiment:
appends (experiment.append), UPDATE_RUN's read and write of run.json, sidecar writes (in
cluster mode: in a standalone daemon nothing else writes them, and appends need not wait
for them) and prune. Holding it, a step checks that the path still names the file it locked (device
and inode): prune renames the directory away under the lock before deleting it, so a
step that finds the name gone or replaced answers NotFound, and no step ever makes an
experiment directory. Plain blocking functions, for worker threads.
"""

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from .entries import Damaged, open_entry
from .errors import NotFound
from .files import METRICS, fsync_dir

logger = logging.getLogger(__name__)

PRUNED = ".pruned-"
"""Prefix of the hidden name a pruned directory has until it is deleted."""


def check_same(fd: int, metrics: Path) -> os.stat_result:
    """The stat of the file open as `fd`; NotFound unless the path `metrics` names it."""
    held = os.fstat(fd)
    try:
        st = os.stat(metrics, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"experiment {metrics.parent.name} not found") from None
    if (st.st_dev, st.st_ino) != (held.st_dev, held.st_ino):
        raise NotFound(f"experiment {metrics.parent.name} not found")
    return held


@contextlib.contextmanager
def held(directory: Path) -> Iterator[int]:
    """The experiment's flock, checked: metrics.bin opened for reading and writing (made,
    empty, when missing: the directory itself never is), locked and checked to still be the
    experiment's. NotFound when the experiment is gone."""
    try:
        fd = open_entry(directory, METRICS, os.O_RDWR | os.O_CREAT)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"experiment {directory.name} not found") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        check_same(fd, directory / METRICS)
        yield fd
    finally:
        os.close(fd)  # and with it the lock


@contextlib.contextmanager
def opened(directory: Path, locked: bool) -> Iterator[int]:
    """metrics.bin open for reading, under the experiment's flock (`held`) when `locked`."""
    if locked:
        with held(directory) as fd:
            yield fd
        return
    fd = open_entry(directory, METRICS, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def remove(directory: Path) -> bool:
    """Prune: rename the directory to a hidden name in the same parent under its flock,
    then delete it. False when it was gone already (another process pruned it)."""
    away = directory.with_name(f"{PRUNED}{directory.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with held(directory):
            os.rename(directory, away)
            fsync_dir(directory.parent)
    except NotFound:
        return False
    except Damaged:  # no usable metrics.bin to lock: nothing appends to it either
        try:
            os.rename(directory, away)
        except FileNotFoundError:
            return False
        fsync_dir(directory.parent)
    try:
        shutil.rmtree(away)
    except OSError as exc:
        logger.warning("%s: renamed away but not deleted: %s", away, exc)
    return True


def sweep_pruned(base: Path) -> int:
    """Delete what a process stopped between prune's rename and its delete left behind
    (another may be deleting it too: errors are ignored, what stays is logged); how
    many were found."""
    found = 0
    for entry in os.scandir(base):
        if entry.name.startswith(PRUNED) and entry.is_dir(follow_symlinks=False):
            found += 1
            shutil.rmtree(entry.path, ignore_errors=True)
            if os.path.lexists(entry.path):
                logger.warning("%s: a pruned directory left behind, not deleted", entry.path)
    return found
