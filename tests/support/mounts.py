"""Tiny and read-only filesystems for disk-full and read-only scenarios (root only)."""

import errno
import os
import subprocess
from pathlib import Path


def _run(*argv: str) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0
    except OSError:  # no such command
        return False


def mount_tmpfs(directory: Path, size: str) -> bool:
    """A tiny filesystem to fill up; False when this machine does not allow mounting."""
    return _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(directory))


def unmount(directory: Path) -> None:
    if not _run("umount", str(directory)):
        _run("umount", "-l", str(directory))


def bind_readonly(directory: Path) -> bool:
    """Make `directory` read-only for everyone, root included (a read-only bind mount)."""
    if not _run("mount", "--bind", str(directory), str(directory)):
        return False
    if not _run("mount", "-o", "remount,bind,ro", str(directory)):
        unmount(directory)
        return False
    try:
        (directory / ".probe").touch()
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return True
    else:
        (directory / ".probe").unlink()
    unmount(directory)
    return False


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no block left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler
