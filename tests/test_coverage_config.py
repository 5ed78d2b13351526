"""The coverage settings scripts/test uses (pyproject.toml) measure the daemon's code in
subprocesses, and a SIGKILLed subprocess does not break combining the data."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PARENT = """
import signal, subprocess, sys, time
server = [sys.executable, "-m", "fetchml.server"]
killed = subprocess.Popen([*server, "hash-key"], stdin=subprocess.PIPE)  # waits on stdin
time.sleep(0.3)
killed.send_signal(signal.SIGKILL)
assert killed.wait() == -signal.SIGKILL
done = subprocess.run([*server, "hash-key"], input=b"k", capture_output=True, check=True)
print(done.stdout.decode().strip())
"""


def coverage(tmp_path: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m coverage COMMAND ARGS` with the project's settings, its data under tmp_path and
    none of the settings of a coverage run this test may itself be part of."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["COVERAGE_FILE"] = str(tmp_path / ".coverage")
    return subprocess.run(
        [sys.executable, "-m", "coverage", command, f"--rcfile={ROOT / 'pyproject.toml'}", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_subprocess_daemons_are_measured_and_a_sigkill_loses_only_its_own_data(
    tmp_path: Path,
) -> None:
    (tmp_path / "parent.py").write_text(PARENT)
    ran = coverage(tmp_path, "run", "parent.py")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == hashlib.sha256(b"k").hexdigest()
    combined = coverage(tmp_path, "combine")
    assert combined.returncode == 0, combined.stderr
    assert "error" not in combined.stdout + combined.stderr
    reported = coverage(tmp_path, "json", "-o", "cov.json")
    assert reported.returncode == 0, reported.stderr
    files = json.loads((tmp_path / "cov.json").read_text())["files"]
    main = files[str(ROOT / "fetchml" / "server" / "__main__.py")]["executed_lines"]
    code = (ROOT / "fetchml" / "server" / "__main__.py").read_text().splitlines()
    hash_key_line = next(i for i, line in enumerate(code, 1) if "raw = sys.stdin.read()" in line)
    assert hash_key_line in main  # run only in the subprocesses
