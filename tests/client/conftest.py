"""Client test fixtures: the daemon as a subprocess on a fixed free port (for restarts)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, daemon_at


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon subprocess, not started: call .start(), .kill(), .start() again..."""
    proc = daemon_at(tmp_path)
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One running daemon subprocess shared by a module's tests (use distinct commits)."""
    proc = daemon_at(tmp_path_factory.mktemp("daemon")).start()
    yield proc
    proc.close()
