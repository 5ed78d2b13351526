"""The shared harness itself: restarts, readiness, failures; and that scripts can use it."""

import ast
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon import ROOT, DaemonProcess

SERVER = """
import pathlib, sys, time
port = pathlib.Path(sys.argv[1]).read_text()
if port == "exit":
    print("cannot start", file=sys.stderr)
    sys.exit(3)
if port != "never":
    time.sleep(0.2)
    print(f"x listening on ws://127.0.0.1:{port}/ws", file=sys.stderr, flush=True)
time.sleep(60)
"""


def fake_server(tmp_path: Path) -> tuple[DaemonProcess, Path]:
    """A server that logs the port written in a file (or exits, or never gets ready)."""
    port_file = tmp_path / "port"
    argv = [sys.executable, "-c", SERVER, str(port_file)]
    return DaemonProcess(None, tmp_path / "server.log", argv=argv), port_file


def test_a_restart_is_ready_only_on_its_own_listening_line(tmp_path: Path) -> None:
    server, port_file = fake_server(tmp_path)
    port_file.write_text("1111")
    assert server.start().url == "ws://127.0.0.1:1111/ws"
    server.kill()
    assert not server.running()
    port_file.write_text("2222")
    server.start()
    assert (server.port, server.starts) == (2222, 2)
    assert server.log().count("listening on") == 2  # both starts, one log
    assert server.stop(signal.SIGTERM) == -signal.SIGTERM


def test_a_server_that_exits_or_never_listens_fails_with_its_log(tmp_path: Path) -> None:
    server, port_file = fake_server(tmp_path)
    port_file.write_text("exit")
    with pytest.raises(AssertionError, match="exited with 3:\ncannot start"):
        server.start()
    port_file.write_text("never")
    began = time.monotonic()
    with pytest.raises(AssertionError, match="not ready after 0 s"):
        server.start(timeout=0.3)
    print(f"gave up after {time.monotonic() - began:.2f} s")
    assert not server.running()  # killed, not left behind


def test_scripts_import_the_harness_without_pytest() -> None:
    """scripts/bench*.py use tests/support with only the runtime dependencies."""
    code = (
        "import sys; sys.modules['pytest'] = None; sys.path.insert(0, sys.argv[1]); "
        "import tests.support.daemon, tests.support.experiments, tests.support.keys"
    )
    subprocess.run([sys.executable, "-c", code, str(ROOT)], check=True, timeout=60)


def test_no_test_module_imports_another() -> None:
    """Tests share code through tests/support only (conftest files hold fixtures)."""
    found = []
    support = ROOT / "tests" / "support"
    for path in sorted((ROOT / "tests").rglob("*.py")):
        relative_ok = path.parent == support  # `.keys` inside tests/support is tests.support.keys
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
            elif isinstance(node, ast.Import):
                module = ",".join(alias.name for alias in node.names)
            else:
                continue
            for name in module.split(","):
                if (name.startswith(".") and not relative_ok) or (
                    name.startswith("tests") and not name.startswith("tests.support")
                ):
                    found.append(f"{path.relative_to(ROOT)}: {name}")
    assert found == []
