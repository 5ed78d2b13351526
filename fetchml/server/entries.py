"""Entries of the data directory, opened without trusting them: never through a symlink,
never waiting on a FIFO, never a device; only a regular file of a sane size is used.
Anything else is Damaged, with a reason naming what is there.
"""

import errno
import os
import stat
from pathlib import Path

from .errors import StorageFault

FILE_MODE = 0o600
SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
"""On every open in the tree: never through a symlink, never waiting on a FIFO."""
KINDS = {
    stat.S_IFLNK: "a symlink",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFREG: "a regular file",
}


class Damaged(StorageFault):
    """An entry of the tree that is not what belongs there: a symlink, FIFO, device, socket
    or directory where a file belongs, a non-directory where an experiment belongs, an
    oversized meta.bin. It is reported, never followed, read, written or waited on."""


def kind(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "of an unknown type")


def _kind_at(name: str | Path, dir_fd: int | None = None) -> str:
    try:
        return kind(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError as exc:
        return f"unusable ({exc.strerror})"


def check(name: str, st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise Damaged(f"{name} is {kind(st.st_mode)}")
    if limit and st.st_size > limit:
        raise Damaged(f"{name} is too large ({st.st_size} bytes)")


def open_regular(name: str | Path, flags: int, *, dir_fd: int | None = None, limit: int = 0) -> int:
    """Open a regular file (of at most `limit` bytes when given) without following a
    symlink, waiting on a FIFO or opening a device (it is looked at first, then checked
    again once open); Damaged naming what is there instead."""
    label = Path(name).name
    try:
        check(label, os.stat(name, dir_fd=dir_fd, follow_symlinks=False), limit)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    try:
        fd = os.open(name, flags | SAFE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    except OSError as exc:  # replaced since it was looked at
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENODEV):
            raise Damaged(f"{label} is {_kind_at(name, dir_fd)}") from None
        raise
    try:
        check(label, os.fstat(fd), limit)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir(directory: Path) -> int:
    """An experiment directory, never through a symlink: a descriptor for opens inside it."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | SAFE_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Damaged(f"experiment directory is {_kind_at(directory)}") from None
        raise


def open_entry(directory: Path, name: str, flags: int, limit: int = 0) -> int:
    """`open_regular` of a file in an experiment directory, the directory itself unfollowed."""
    dir_fd = open_dir(directory)
    try:
        return open_regular(name, flags, dir_fd=dir_fd, limit=limit)
    finally:
        os.close(dir_fd)
