"""Commits on the command line: full, a unique prefix of 6+, or HEAD; and --version."""

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from fetchml import __version__
from fetchml.client import cli
from tests.support.cli import Cli
from tests.support.daemon import ROOT, DaemonProcess

FIRST = "c0ffee00" + "1" * 32
SECOND = "c0ffee01" + "2" * 32


@pytest.fixture
def run(shared_server: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(shared_server, capsys)


def test_a_unique_prefix_wherever_a_commit_is_taken(run: Cli, tmp_path: Path) -> None:
    run.ok("log", FIRST, "loss", "0.5", "--step", "1", "--create")
    run.ok("log", SECOND, "loss", "0.25", "--step", "2", "--create")
    shown = run.json("show", "c0ffee00")
    assert isinstance(shown, dict) and shown["metadata"]["commit_id"] == FIRST
    assert run.ok("log", "C0FFEE01", "acc", "1", "--step", "3").startswith("logged acc=1")
    records = run.json("query", "c0ffee01")
    assert isinstance(records, list) and [r["name"] for r in records] == ["loss", "acc"]
    lines = run.ok("watch", "c0ffee01222", "--json", "--exit-after", "2").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 3]
    out = tmp_path / "first.csv"
    assert run.ok("export", "c0ffee001", "-o", str(out)) == f"wrote 1 records to {out}\n"
    job = run.json("queue", "prefixed", "--commit", "c0ffee0011")
    assert isinstance(job, dict) and job["metadata"]["commit_id"] == FIRST
    assert run.json("show", FIRST.upper())["metadata"]["commit_id"] == FIRST  # type: ignore[index]


def test_an_ambiguous_or_unknown_prefix_is_an_error(run: Cli) -> None:
    run.ok("log", FIRST, "loss", "0.5", "--create")
    run.ok("log", SECOND, "loss", "0.5", "--create")
    for argv in (("show", "c0ffee"), ("log", "c0ffee0", "x", "1"), ("query", "C0FFEE")):
        code, out, err = run(*argv)
        assert (code, out) == (1, ""), argv
        assert err == f"error: commit prefix {argv[1].lower()} is ambiguous: {FIRST}, {SECOND}\n"
    code, out, err = run("show", "ba5eba11")
    assert (code, out, err) == (1, "", "error: no experiment matches commit prefix ba5eba11\n")
    for bad in ("c0ffe", "c0ffeeg", FIRST + "0", "head"):
        code, _, err = run("show", bad)
        assert code == 2 and "a unique prefix of 6 or more, or HEAD" in err, bad


def test_head_is_the_current_directory_s_git_commit(
    run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    done = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    head = done.stdout.strip()
    monkeypatch.chdir(repo)
    assert run.ok("log", "HEAD", "loss", "0.5", "--create") == "logged loss=0.5 at step 0\n"
    shown = run.json("show", "HEAD")
    assert isinstance(shown, dict) and shown["metadata"]["commit_id"] == head
    job = run.json("queue", "at-head", "--commit", "HEAD")
    assert isinstance(job, dict) and job["metadata"]["commit_id"] == head
    monkeypatch.chdir(tmp_path)  # not a repository
    code, out, err = run("show", "HEAD")
    assert (code, out) == (1, "")
    assert err.startswith("error: HEAD given and `git rev-parse HEAD` failed: ")
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    code, _, err = run("show", "HEAD")
    assert code == 1 and err.startswith("error: HEAD given and git is not available: ")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"fetchml {__version__}\n"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"]
