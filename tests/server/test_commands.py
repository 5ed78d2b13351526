"""`fetchml-server keygen` and `hash-key`: keys are made and hashed as the config expects."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import yaml

from server.config import parse_config

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


def test_keygen_prints_a_key_once_and_the_yaml_for_it() -> None:
    result = run("keygen", "--user", "alice", "--role", "researcher")
    assert result.returncode == 0, result.stderr
    (key,) = re.findall(r"^\s+(fml_\S+)$", result.stdout, re.M)
    assert len(key) >= 4 + 43  # 256 random bits, URL-safe base64
    (line,) = [x for x in result.stdout.splitlines() if x.strip().startswith("alice:")]
    config = parse_config({"auth": {"api_keys": yaml.safe_load(line)}})
    entry = config.auth.api_keys["alice"]
    assert entry.role == "researcher"
    assert entry.hash == hashlib.sha256(key.encode()).hexdigest()
    assert run("keygen", "--user", "alice", "--role", "researcher").stdout.count(key) == 0


def test_hash_key_reads_the_raw_key_on_stdin() -> None:
    result = run("hash-key", stdin="fml_example_key_do_not_use\n")
    assert result.returncode == 0
    assert result.stdout == "5ba7dccf22514f45ae84bfb8b12cd02e0f842aa2a49fbd973c97288bebaf1cb6\n"


def test_hash_key_without_input_fails() -> None:
    result = run("hash-key")
    assert result.returncode == 1
    assert "no key on stdin" in result.stderr
