"""scripts/bench-peers' own parts: the table it prints from runs, and the peers' venv, which
it installs only when its stamp does not name the pinned versions (no network here)."""

import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers import PEERS, Figure, ensure_venv, table  # noqa: E402
from bench_peers_fetchml import Run  # noqa: E402


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/simple/"


def test_table_shows_medians_and_fetchml_lead() -> None:
    calls = Figure(
        "sync",
        "calls/s",
        peer=[Run(1.0, 400), Run(1.0, 500), Run(1.0, 9000)],
        ours=[Run(1.0, 4000), Run(2.0, 4000), Run(0.5, 4000)],
    )
    cpu = Figure(
        "cpu",
        "s",
        cpu=True,
        peer=[Run(1.0, 1_000_000, 30.0), Run(1.0, 1_000_000, 20.0), Run(1.0, 2_000_000, 4.0)],
        ours=[Run(1.0, 1_000_000, 2.0), Run(1.0, 500_000, 1.0), Run(1.0, 1_000_000, 9.0)],
    )
    lines = table([calls, cpu]).splitlines()
    assert lines[0] == "| figure | FastTrackML | fetchml | fetchml's lead |"
    assert lines[2] == "| sync (calls/s) | 500 | 4,000 | 8.0x |"
    assert lines[3] == "| cpu (s) | 20 | 2 | 10.0x |"


def test_unreachable_index_stops_with_a_clear_message(tmp_path: Path) -> None:
    index = closed_port_url()
    with pytest.raises(SystemExit) as raised:
        ensure_venv(tmp_path / "venv", index)
    message = str(raised.value)
    print(message)
    assert f"cannot reach the package index {index}" in message
    assert "fasttrackml==0.6.0" in message
    assert not (tmp_path / "venv").exists()


def test_installed_venv_needs_no_index(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    (venv / ".installed").write_text("\n".join(PEERS))
    assert ensure_venv(venv, closed_port_url()) == venv / "bin" / "python"
    (venv / ".installed").write_text("fasttrackml==0.5.1")
    with pytest.raises(SystemExit, match="cannot reach the package index"):
        ensure_venv(venv, closed_port_url())
