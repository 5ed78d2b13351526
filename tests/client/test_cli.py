"""`fetchml` subcommands through cli.main() against a daemon subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetchml.client import MetricLogger, cli
from tests.support.cli import Cli
from tests.support.daemon import ROOT, DaemonProcess, daemon_at, free_port
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY, ALICE_KEY, KEYS, key_entry

C = commit_of("cli")
SUBCOMMANDS = (
    "status",
    "queue",
    "cancel",
    "prune",
    "ls",
    "show",
    "log",
    "query",
    "watch",
    "export",
    "whoami",
)


@pytest.fixture
def run(shared_server: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(shared_server, capsys)


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "example:" in out and all(name in out for name in SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert cli.main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "example:" in out and f"fetchml {name}" in out, name


def test_whoami(run: Cli) -> None:
    assert run.ok("whoami") == "admin (role root, scope all): *\n"
    assert run.json("whoami", key=ALICE_KEY) == {
        "user": "alice",
        "role": "researcher",
        "permissions": ["jobs:create", "jobs:read", "jobs:update"],
        "scope": "own",
        "read_scope": "own",
        "write_scope": "own",
        "limits": {"lease_s": 120, "crash_after_s": 300, "max_message_bytes": 1048576},
    }
    # connection options may also follow the subcommand
    code = cli.main(["whoami", "--url", run.server.url, "--api-key", ALICE_KEY])
    assert code == 0 and run.capsys.readouterr().out.startswith("alice ")


def test_log_show_query_ls(run: Cli) -> None:
    assert run.ok("log", C, "loss", "0.5", "--step", "1", "--create") == (
        "logged loss=0.5 at step 1\n"
    )
    run.ok("log", C, "loss", "0.25", "--step", "2")
    run.ok("log", C, "loss", "nan", "--step", "3")
    assert run.json("log", C, "acc", "inf", "--step", "3") == {
        "name": "acc",
        "step": 3,
        "value": "Infinity",
    }

    text = run.ok("show", C)
    assert f"commit   {C}" in text and "records  4" in text and "user     admin" in text
    rows = [line.split() for line in text.splitlines()[-3:]]
    assert rows[0][:3] == ["NAME", "STEP", "VALUE"]
    assert {r[0]: r[1:3] for r in rows[1:]} == {"loss": ["3", "nan"], "acc": ["3", "inf"]}
    shown = run.json("show", C)
    assert isinstance(shown, dict)
    assert shown["metadata"]["commit_id"] == C and shown["metrics_count"] == 4
    assert shown["latest"]["loss"]["value"] == "NaN" and shown["latest"]["acc"]["step"] == 3

    table = run.ok("query", C)
    assert table.splitlines()[0].split() == ["NAME", "STEP", "VALUE", "TIME"]
    assert [line.split()[:3] for line in table.splitlines()[1:]] == [
        ["loss", "1", "0.5"],
        ["loss", "2", "0.25"],
        ["loss", "3", "nan"],
        ["acc", "3", "inf"],
    ]
    records = run.json("query", C)
    assert isinstance(records, list) and len(records) == 4
    assert records[0] == {
        "name": "loss",
        "step": 1,
        "value": 0.5,
        "timestamp": records[0]["timestamp"],
    }
    named = run.json("query", C, "--name", "loss", "--steps", "2:3")
    assert isinstance(named, list)
    assert [(r["step"], r["value"]) for r in named] == [(2, 0.25), (3, "NaN")]
    assert run.json("query", C, "--steps", "2") == [named[0]]
    down = run.json("query", C, "--name", "loss", "--points", "2")
    assert isinstance(down, list) and [r["step"] for r in down] == [1, 3]
    assert run.ok("query", C, "--name", "nothing") == "(no matching metrics)\n"

    listing = run.json("ls")
    assert isinstance(listing, list)
    mine = [e for e in listing if e["commit_id"] == C]
    assert mine == [
        {
            "commit_id": C,
            "timestamp": mine[0]["timestamp"],
            "job_name": "",
            "user": "admin",
            "metrics_count": 4,
            "damaged": None,
            "run": None,
        }
    ]
    lines = run.ok("ls").splitlines()
    assert lines[0].split() == ["COMMIT", "JOB", "USER", "CREATED", "METRICS"]
    assert any(line.startswith(C) and line.endswith(" 4") for line in lines)


def test_queue_status_cancel(run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = commit_of("cli-jobs")
    out = run.ok("queue", "cli-train", "--commit", commit, "--priority", "7")
    assert out.startswith("queued cli-train as ") and "priority 7, queued" in out
    job = run.json("queue", "cli-train", "--commit", commit.upper())
    assert isinstance(job, dict)
    assert (job["job_name"], job["priority"], job["status"]) == ("cli-train", 5, "queued")
    assert job["metadata"] == {"commit_id": commit, "user": "admin"}

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    monkeypatch.chdir(repo)
    from_git = run.json("queue", "cli-git")
    assert isinstance(from_git, dict) and from_git["metadata"]["commit_id"] == head.stdout.strip()
    monkeypatch.chdir(tmp_path)
    code, _, err = run("queue", "cli-git")
    assert code == 1 and err.startswith("error: no --commit given and `git rev-parse HEAD` failed")

    status = run.json("status")
    assert isinstance(status, dict) and status["user"] == "admin" and status["queue_length"] >= 3
    assert [j["job_name"] for j in status["jobs"][:3]] == ["cli-git", "cli-train", "cli-train"]
    text = run.ok("status")
    assert text.startswith("user admin (root): ")
    assert text.splitlines()[1].split()[:4] == ["ID", "NAME", "STATUS", "PRI"]
    assert job["id"][:8] in text
    watched = run.ok("status", "--watch", "--count", "2", "--interval", "0", "--json")
    assert [json.loads(line)["user"] for line in watched.splitlines()] == ["admin", "admin"]

    train = sorted(j["id"] for j in status["jobs"] if j["job_name"] == "cli-train")
    lines = run.ok("cancel", "cli-train").splitlines()
    assert lines[0] == "cancelled 2 job(s) named cli-train" and sorted(lines[1:]) == train
    assert run.json("cancel", "cli-git") == {"cancelled": 1, "ids": [from_git["id"]]}
    code, out, err = run("cancel", "cli-train")
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and err.count("\n") == 1


def test_usage_errors_exit_2(run: Cli) -> None:
    for argv in (
        ("queue", "j", "--commit", C, "--priority", "11"),
        ("queue", "j", "--commit", "abc"),
        ("show", "xyz"),
        ("prune",),
        ("prune", "--keep", "1", "--older-than", "2"),
        ("log", C, "loss", "abc"),
        ("query", C, "--steps", "5:2"),
        ("export", C, "--format", "xml", "-o", "x"),
        ("nosuchcommand",),
    ):
        code, _, err = run(*argv)
        assert code == 2, argv
        assert "usage:" in err


def test_failures_print_one_error_line(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = commit_of("cli-missing")
    code, out, err = run("show", missing)
    assert (code, out, err) == (1, "", f"error: experiment {missing} not found\n")
    code, _, err = run("whoami", key="wrong-key")
    assert (code, err) == (1, "error: Invalid API key\n")
    code, _, err = run("log", missing, "loss", "1")
    assert code == 1 and "not found" in err
    dead = f"ws://127.0.0.1:{free_port()}/ws"
    assert cli.main(["--url", dead, "--api-key", ADMIN_KEY, "ls"]) == 1
    err = run.capsys.readouterr().err
    assert err.startswith(f"error: cannot connect to {dead}") and err.count("\n") == 1
    monkeypatch.setenv("HOME", "/nonexistent")
    monkeypatch.delenv("FETCHML_API_KEY", raising=False)
    assert cli.main(["--url", dead, "ls"]) == 1
    assert run.capsys.readouterr().err.startswith("error: no API key")


def test_environment_supplies_url_and_key(
    run: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("FETCHML_URL", run.server.url)
    monkeypatch.setenv("FETCHML_API_KEY", ALICE_KEY)
    assert cli.main(["whoami"]) == 0
    assert run.capsys.readouterr().out.startswith("alice ")
    monkeypatch.delenv("FETCHML_API_KEY")
    (tmp_path / ".ml").mkdir()
    (tmp_path / ".ml" / "config.toml").write_text(f'api_key = "{ADMIN_KEY}"\n')
    assert cli.main(["whoami"]) == 0
    assert run.capsys.readouterr().out.startswith("admin ")


def test_watch_table_json_and_plot(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = commit_of("cli-watch")
    run.ok("log", commit, "loss", "2.0", "--step", "1", "--create")
    run.ok("log", commit, "loss", "1.5", "--step", "2")
    run.ok("log", commit, "acc", "0.75", "--step", "2")
    text = run.ok("watch", commit, "--exit-after", "3")
    final = text.split(f"watching {commit}\n")[-1].splitlines()
    assert [line.split()[:3] for line in final] == [
        ["NAME", "STEP", "VALUE"],
        ["acc", "2", "0.75"],
        ["loss", "2", "1.5"],
    ]
    lines = run.ok("watch", commit, "--name", "loss", "--exit-after", "2", "--json").splitlines()
    assert [json.loads(line)["value"] for line in lines] == [2.0, 1.5]
    lines = run.ok("watch", commit, "--from-index", "2", "--exit-after", "1", "--json").splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["acc"]

    pytest.importorskip("plotext")
    chart = run.ok("watch", commit, "--plot", "--exit-after", "3")
    assert "2 metric(s)" in chart
    monkeypatch.setitem(sys.modules, "plotext", None)
    code, _, err = run("watch", commit, "--plot", "--exit-after", "3")
    assert code == 1
    assert (
        err
        == "error: watch --plot needs the optional plotext package: pip install 'fetchml[plot]'\n"
    )


def test_prune(server_process: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> None:
    server_process.start()
    run = Cli(server_process, capsys)
    commits = [commit_of(f"cli-prune-{i}") for i in range(3)]
    for commit in commits:
        run.ok("log", commit, "x", "1", "--create")
    assert run.json("prune", "--older-than", "1") == {"pruned": []}
    out = run.ok("prune", "--keep", "1", "--yes").splitlines()
    assert out[0] == "pruned 2 experiment(s)" and len(out) == 3
    assert set(out[1:]) < set(commits)
    assert len(run.json("ls")) == 1  # type: ignore[arg-type]


def test_ls_shows_damaged_entries(
    server_process: DaemonProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    server_process.data.mkdir(parents=True)
    bad = "d" * 40
    os.mkfifo(server_process.data / bad)
    server_process.start()
    run = Cli(server_process, capsys)
    run.ok("log", C, "x", "1", "--create")
    rows = run.json("ls")
    assert isinstance(rows, list) and [r["commit_id"] for r in rows] == [C, bad]
    assert rows[0]["damaged"] is None and "FIFO" in rows[1]["damaged"]
    lines = run.ok("ls").splitlines()
    assert lines[2].startswith(bad) and "damaged: " in lines[2] and "FIFO" in lines[2]


def test_as_a_process(shared_server: DaemonProcess) -> None:
    """`python -m client.cli`: exit codes, stdout, and a pipe closed early."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [
        sys.executable,
        "-m",
        "fetchml.client.cli",
        "--url",
        shared_server.url,
        "--api-key",
        ADMIN_KEY,
    ]
    done = subprocess.run([*base, "whoami"], capture_output=True, text=True, env=env, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "admin (role root, scope all): *\n",
        "",
    )
    done = subprocess.run(
        [*base, "show", commit_of("cli-none")], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: experiment ") and done.stderr.count("\n") == 1
    commit = commit_of("cli-pipe")
    assert (
        cli.main(
            [
                "--url",
                shared_server.url,
                "--api-key",
                ADMIN_KEY,
                "log",
                commit,
                "x",
                "1",
                "--create",
            ]
        )
        == 0
    )
    with MetricLogger(commit, shared_server.url, ADMIN_KEY) as ml:
        for i in range(20_000):  # ~1 MB of table: far more than a pipe holds
            ml.log("x", float(i), step=i)
    proc = subprocess.Popen(
        [*base, "query", commit], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    assert proc.wait(60) == 0 and first.split()[:2] == [b"NAME", b"STEP"]
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_whoami_shows_both_scopes_when_they_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = {**KEYS, "mia": ("member", "fml_test_mia_key")}
    api_keys = {user: key_entry(key, role) for user, (role, key) in users.items()}
    proc = daemon_at(tmp_path, auth={"api_keys": api_keys}).start()
    try:
        out = Cli(proc, capsys).ok("whoami", key="fml_test_mia_key")
    finally:
        proc.close()
    assert out == (
        "mia (role member, read scope all, write scope own): jobs:create, jobs:read, jobs:update\n"
    )
