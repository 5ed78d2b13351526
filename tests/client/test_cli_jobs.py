"""`fetchml queue -- COMMAND`, `cancel` by ID or name, and the `jobs` table, against a daemon."""

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fetchml.client import Client
from fetchml.client.errors import InvalidRequest
from fetchml.client.jobcmds import cancel_target
from fetchml.client.models import Job, Status
from fetchml.client.runs import RunSummary
from fetchml.protocol.enums import JobStatus
from tests.support.cli import Cli
from tests.support.daemon import DaemonProcess, daemon_at
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY, KEYS, key_entry

GIT = commit_of("jobs-git")
LEASE_S = 1
CANCEL_ONLY_KEY = "fml_test_cancel_only_key"
"""A role with jobs:update alone: it may cancel, not read STATUS."""


@pytest.fixture(scope="module")
def jobsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """The module's daemon, with a short lease so a lost worker requeues its job."""
    keys = {user: key_entry(key, role) for user, (role, key) in KEYS.items()}
    auth = {
        "api_keys": keys | {"carl": key_entry(CANCEL_ONLY_KEY, "canceller")},
        "roles": {
            "root": {"permissions": ["*"], "scope": "all"},
            "canceller": {"permissions": ["jobs:update"], "scope": "all"},
        },
    }
    home = tmp_path_factory.mktemp("daemon")
    proc = daemon_at(home, jobs={"lease_s": LEASE_S}, auth=auth).start()
    yield proc
    proc.close()


@pytest.fixture
def run(jobsd: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(jobsd, capsys)


@pytest.fixture
def outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sync(coro: Any) -> Any:
    return asyncio.run(coro)


async def jobs_of(url: str) -> dict[str, Job]:
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        return {job.id: job for job in (await c.status()).jobs}


async def run_row(url: str, run_id: str) -> RunSummary:
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        (row,) = (await c.list_runs_page({"id": run_id})).runs
        return row


def queued(run: Cli, *argv: str) -> dict[str, Any]:
    job = json.loads(run.ok("queue", "--json", *argv))  # --json before the command's `--`
    assert isinstance(job, dict)
    return job


def git_repo(path: Path) -> str:
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    return head.stdout.strip()


def test_the_command_after_dashes_is_the_spec(run: Cli, outside_git: Path) -> None:
    command = ["python", "-c", "print('a b')", "--lr", "0.1", "", "x  y", '"q"', "--"]
    job = queued(
        run,
        "jc-spec",
        *("--env", "SEED=1", "--env", "OPTS=a=b c", "--env", "EMPTY="),
        *("--max-attempts", "3", "--timeout", "90", "--workdir", "/srv/w x", "--priority", "7"),
        *("--commit", GIT, "--", *command),
    )
    spec = {
        "command": command,
        "env": {"SEED": "1", "OPTS": "a=b c", "EMPTY": ""},
        "workdir": "/srv/w x",
        "max_attempts": 3,
        "timeout_s": 90,
    }
    assert (job["job_name"], job["priority"], job["spec"], job["attempts"]) == (
        "jc-spec",
        7,
        spec,
        0,
    )
    stored = sync(jobs_of(run.server.url))[job["id"]]
    assert stored.spec == spec and stored.status is JobStatus.QUEUED
    row = sync(run_row(run.server.url, job["metadata"]["commit_id"]))
    assert row.run is not None and (row.run.name, row.run.git_commit) == ("jc-spec", GIT)

    plain = queued(run, "jc-plain", "--", "true")
    assert plain["spec"] == {
        "command": ["true"],
        "env": {},
        "workdir": None,
        "max_attempts": 1,
        "timeout_s": 0,
    }
    here = queued(run, "jc-here", "--workdir", "src", "--", "true")
    assert here["spec"]["workdir"] == str(outside_git / "src")  # from where it was typed
    row = sync(run_row(run.server.url, plain["metadata"]["commit_id"]))
    assert row.run is not None and (row.run.name, row.run.git_commit) == ("jc-plain", None)


def test_a_fresh_run_per_job_named_after_it(run: Cli, outside_git: Path) -> None:
    first = run.ok("queue", "jc-twice", "--commit", GIT, "--", "python", "train.py")
    second = run.ok("queue", "jc-twice", "--commit", GIT, "--", "python", "train.py")
    runs = []
    for out in (first, second):
        lines = out.splitlines()
        assert re.fullmatch(r"queued jc-twice as [0-9a-f-]{36} \(priority 5, queued\)", lines[0])
        match = re.fullmatch(rf"run ([0-9a-f]{{40}}) \(new\), git commit {GIT}", lines[1])
        assert match, lines[1]
        runs.append(match.group(1))
        short = match.group(1)[:12]
        assert lines[2] == f"follow it: fetchml jobs; fetchml show {short}; fetchml watch {short}"
    assert runs[0] != runs[1]
    jobs = sync(jobs_of(run.server.url)).values()
    assert sorted(job.commit_id for job in jobs if job.job_name == "jc-twice") == sorted(runs)
    for run_id in runs:
        row = sync(run_row(run.server.url, run_id))
        assert row.run is not None and (row.run.name, row.run.git_commit) == ("jc-twice", GIT)


def test_commit_defaults_to_head_and_takes_a_prefix(
    run: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    head = git_repo(tmp_path / "repo")
    monkeypatch.chdir(tmp_path / "repo")
    for argv in ((), ("--commit", head[:8]), ("--commit", "HEAD")):
        job = queued(run, "jc-head", *argv, "--", "true")
        row = sync(run_row(run.server.url, job["metadata"]["commit_id"]))
        assert row.run is not None and row.run.git_commit == head, argv
    code, out, err = run("queue", "jc-head", "--commit", "abcdef12", "--", "true")
    assert (code, out) == (1, "")
    assert err == "error: --commit abcdef12: not a commit of a git checkout here\n"


def test_run_resumes_an_existing_run(run: Cli, outside_git: Path) -> None:
    first = queued(run, "jc-resume", "--commit", GIT, "--", "python", "train.py")
    run_id = first["metadata"]["commit_id"]
    out = run.ok("queue", "jc-resume-2", "--run", run_id[:10], "--", "python", "train.py")
    assert f"run {run_id} (resumed), git commit -" in out
    jobs = sync(jobs_of(run.server.url))
    again = [job for job in jobs.values() if job.job_name == "jc-resume-2"]
    assert [job.commit_id for job in again] == [run_id]
    row = sync(run_row(run.server.url, run_id))
    assert row.run is not None and (row.run.name, row.run.git_commit) == ("jc-resume-2", GIT)


def test_a_run_document_that_cannot_be_updated_is_an_error(
    run: Cli, jobsd: DaemonProcess, outside_git: Path
) -> None:
    first = queued(run, "jc-broken", "--", "true")
    run_id = first["metadata"]["commit_id"]
    (jobsd.data / run_id / "run.json").write_text("not json")
    code, out, err = run("queue", "jc-broken", "--run", run_id, "--", "true")
    assert (code, out) == (1, "")
    queued_line, error = err.splitlines()
    assert queued_line.startswith("queued jc-broken as ")
    assert error == f"error: run {run_id} not updated: run document unreadable"
    jobs = sync(jobs_of(run.server.url)).values()
    assert [job.commit_id for job in jobs if job.job_name == "jc-broken"] == [run_id, run_id]


def test_without_a_command_it_queues_for_fetch_ml_workers(run: Cli) -> None:
    code, out, err = run("queue", "jc-old", "--commit", GIT)
    assert code == 0 and out.startswith("queued jc-old as ") and f"commit {GIT}" in out
    assert err.startswith("note: no command given after --: queued for fetch_ml's own workers")
    (job,) = [j for j in sync(jobs_of(run.server.url)).values() if j.job_name == "jc-old"]
    assert (job.spec, job.commit_id) == (None, GIT)


def test_cancel_by_id_cancels_only_that_job(run: Cli, outside_git: Path) -> None:
    a, b, c = (queued(run, "jc-same", "--", "true")["id"] for _ in range(3))
    assert run.ok("cancel", a) == "cancelled job " + a + " (jc-same)\n"
    assert run.json("cancel", b[:8]) == {"cancelled": 1, "ids": [b]}
    status = {i: job.status for i, job in sync(jobs_of(run.server.url)).items()}
    assert (status[a], status[b], status[c]) == (JobStatus.CANCELLED,) * 2 + (JobStatus.QUEUED,)
    code, out, err = run("cancel", a)
    assert (code, out, err) == (1, "", f"error: job {a} is cancelled, not queued or running\n")


def test_cancel_by_name_cancels_every_job_of_it(run: Cli, outside_git: Path) -> None:
    ids = sorted(queued(run, "jc-name", "--", "true")["id"] for _ in range(2))
    other = queued(run, "jc-other", "--", "true")["id"]
    lines = run.ok("cancel", "jc-name").splitlines()
    assert lines[0] == "cancelled 2 job(s) named jc-name" and sorted(lines[1:]) == ids
    status = {i: job.status for i, job in sync(jobs_of(run.server.url)).items()}
    assert [status[i] for i in ids] == [JobStatus.CANCELLED] * 2
    assert status[other] is JobStatus.QUEUED
    code, out, err = run("cancel", "jc-name")
    assert (code, out, err) == (1, "", "error: no queued or running job named 'jc-name'\n")


def test_a_key_that_cannot_read_jobs_still_cancels(run: Cli, outside_git: Path) -> None:
    ids = [queued(run, "jc-blind", "--", "true")["id"] for _ in range(3)]
    code, _, err = run("jobs", key=CANCEL_ONLY_KEY)
    assert (code, err) == (1, "error: Insufficient permissions\n")
    out = run.ok("cancel", ids[0], key=CANCEL_ONLY_KEY)
    assert out == f"cancelled 1 job(s) by ID or name {ids[0]}\n"
    out = run.ok("cancel", "jc-blind", key=CANCEL_ONLY_KEY)
    assert out == "cancelled 2 job(s) by ID or name jc-blind\n"
    status = {i: job.status for i, job in sync(jobs_of(run.server.url)).items()}
    assert [status[i] for i in ids] == [JobStatus.CANCELLED] * 3


def test_an_ambiguous_id_prefix_names_its_jobs() -> None:
    def job(id: str, name: str, status: JobStatus = JobStatus.QUEUED) -> Job:
        return Job(
            id=id, job_name=name, status=status, priority=5, created_at=0, commit_id=GIT, user="u"
        )

    one, two, done = "abcdef01-1", "abcdef02-2", "abcdef03-3"
    jobs = (job(one, "a"), job(two, "b"), job(done, "c", JobStatus.COMPLETED), job("x", "abcdef"))
    status = Status(user="u", role="r", jobs=jobs, queue_length=2, total=4)
    assert cancel_target(status, "abcdef01") == one
    assert cancel_target(status, "abcdef03") == "abcdef03"  # not active: the daemon decides
    assert cancel_target(status, "abcdef") == "abcdef"  # a name wins over a prefix
    assert cancel_target(status, "abcde") == "abcde"  # too short to be a prefix
    with pytest.raises(
        InvalidRequest, match=f"job ID prefix abcdef0 is ambiguous: {one} .a., {two}"
    ):
        cancel_target(status, "abcdef0")


async def lease_lost(url: str, job_id: str) -> Job:
    """Claim the job as worker w-1, go silent until the lease expires, then claim it again as
    w-2 and send one heartbeat."""
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        claimed = await c.claim_job("w-1")
        assert claimed is not None and claimed.id == job_id
        for _ in range(100):
            job = {j.id: j for j in (await c.status()).jobs}[job_id]
            if job.status is JobStatus.QUEUED:
                break
            await asyncio.sleep(0.1)
        claimed = await c.claim_job("w-2")
        assert claimed is not None and claimed.id == job_id
        await c.update_job(job_id, "running", worker_id="w-2")
        return {j.id: j for j in (await c.status()).jobs}[job_id]


def test_jobs_table_shows_attempts_worker_heartbeat_and_command(
    run: Cli, outside_git: Path
) -> None:
    sync(cancel_all(run.server.url))
    long = ["python", "train.py", "--learning-rate", "0.001", "--epochs", "100"]
    job_id = queued(run, "jc-table", "--max-attempts", "3", "--", *long)["id"]
    job = sync(lease_lost(run.server.url, job_id))
    assert (job.attempts, job.worker_id, job.status) == (1, "w-2", JobStatus.RUNNING)
    assert job.heartbeat_at is not None
    lines = run.ok("jobs").splitlines()
    headers = ["ID", "NAME", "STATUS", "PRI", "ATTEMPTS", "WORKER", "HEARTBEAT", "USER"]
    assert lines[1].split() == [*headers, "CREATED", "RUN", "COMMAND"]
    (row,) = [line for line in lines if line.startswith(job_id[:8])]
    assert re.search(r" running +5 +1/3 +w-2 +\d+s ago +admin ", row), row
    assert row.endswith(" python train.py --learning-rate 0.001...")
    ages = re.compile(r"\d+s ago")
    assert ages.sub("", run.ok("status")) == ages.sub("", run.ok("jobs"))  # an alias
    shown = run.json("jobs")
    assert isinstance(shown, dict)
    (item,) = [j for j in shown["jobs"] if j["id"] == job_id]
    assert (item["attempts"], item["worker_id"], item["heartbeat_at"]) == (
        1,
        "w-2",
        job.heartbeat_at,
    )
    assert item["spec"]["command"] == long and item["claimed_by"] == "admin"


async def cancel_all(url: str) -> None:
    """Leave no queued job from earlier tests in front of the next claim."""
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        for job in (await c.status()).jobs:
            if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                await c.cancel_job(job.id)


def test_usage_errors_exit_2(run: Cli) -> None:
    bad: tuple[tuple[tuple[str, ...], str], ...] = (
        (("--env", "NOEQUALS"), "expected KEY=VALUE, got 'NOEQUALS'"),
        (("--env", "=v"), "expected KEY=VALUE, got '=v'"),
        (("--max-attempts", "0"), "max attempts must be an integer 1..10, got '0'"),
        (("--max-attempts", "11"), "max attempts must be an integer 1..10, got '11'"),
        (("--timeout", "-1"), "timeout must be whole seconds 0..2147483647, got '-1'"),
        (("--timeout", "1.5"), "timeout must be whole seconds 0..2147483647, got '1.5'"),
    )
    for argv, why in bad:
        code, out, err = run("queue", "jc-bad", *argv, "--", "true")
        assert (code, out) == (2, ""), argv
        assert "usage:" in err and why in err, err
    refused: tuple[tuple[tuple[str, ...], str], ...] = (
        (("--",), "no command after --"),
        (("--", "", "x"), "spec.command: must be 1..64 strings, the first non-empty"),
        (("--", *["w"] * 65), "spec.command: must be 1..64 strings, the first non-empty"),
        (("--env", "A=1"), "--env needs a command: queue NAME [options] -- COMMAND..."),
        (("--run", GIT), "--run needs a command"),
        (("python", "train.py"), "unrecognized arguments: python train.py"),
    )
    for argv, why in refused:
        code, out, err = run("queue", "jc-bad", *argv)
        assert (code, out) == (2, ""), argv
        assert "usage:" in err and why in err, err
    assert not [j for j in sync(jobs_of(run.server.url)).values() if j.job_name == "jc-bad"]
