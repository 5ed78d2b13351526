"""The job commands of `fetchml`: queue, cancel, and status (alias jobs).

`fetchml queue NAME [options] -- COMMAND...` queues COMMAND for a worker
(QUEUE_JOB_SPEC) on a run of its own: a fresh random run ID per job, or the run
`--run` names; then UPDATE_RUN names the run after the job and records the git
commit. Without a command it is the old QUEUE_JOB on the experiment `--commit`
names, for fetch_ml's own workers.
"""

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from fetchml.protocol.enums import JobStatus
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.jobspec import MAX_ATTEMPTS, MAX_TIMEOUT_S, parse_spec

from .cliargs import HEAD, MIN_PREFIX, git_head, int_in
from .connection import Client
from .errors import FetchmlError, InvalidRequest, PermissionDenied
from .live import CLEAR
from .models import Job, Status
from .output import dumps, emit, jobs_table
from .runinfo import git_commit, new_run_id

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
SPEC_OPTIONS = {"env": "--env", "max_attempts": "--max-attempts", "timeout": "--timeout"}
SPEC_OPTIONS |= {"workdir": "--workdir", "run": "--run"}
"""Options that only make sense with a command (dest: flag)."""
NO_COMMAND_NOTE = (
    "note: no command given after --: queued for fetch_ml's own workers "
    '(`fetchml worker` fails such a job at once with "no command")'
)


def env_pair(text: str) -> tuple[str, str]:
    """`--env KEY=VALUE` (argparse type)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def max_attempts(text: str) -> int:
    return int_in(text, 1, MAX_ATTEMPTS, f"max attempts must be an integer 1..{MAX_ATTEMPTS}")


def timeout(text: str) -> int:
    return int_in(text, 0, MAX_TIMEOUT_S, f"timeout must be whole seconds 0..{MAX_TIMEOUT_S}")


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str] | None]:
    """`queue`'s own words and the command after its first `--` (None without one).
    Other subcommands keep their `--` (`tag RUN -- -h`)."""
    words = list(argv)
    i = 0
    while i < len(words) and words[i].startswith("-") and words[i] != "--":
        takes_value = words[i] in ("--url", "--api-key")
        i += 2 if takes_value else 1
    if i >= len(words) or words[i] != "queue" or "--" not in words[i:]:
        return words, None
    cut = words.index("--", i)
    return words[:cut], words[cut + 1 :]


def check_queue(args: argparse.Namespace, command: list[str] | None) -> str | None:
    """Put `queue`'s spec in args.spec (None without a command); a usage error's text."""
    args.spec = None
    if command is None:
        given = [flag for dest, flag in SPEC_OPTIONS.items() if getattr(args, dest) is not None]
        return f"{given[0]} needs a command: queue NAME [options] -- COMMAND..." if given else None
    if not command:
        return "no command after --"
    spec: dict[str, Any] = {"command": command, "env": dict(args.env or [])}
    spec["workdir"] = None if args.workdir is None else os.path.abspath(args.workdir)
    spec["max_attempts"] = 1 if args.max_attempts is None else args.max_attempts
    spec["timeout_s"] = 0 if args.timeout is None else args.timeout
    try:
        args.spec = parse_spec(dumps(spec))
    except MalformedRequest as exc:
        return exc.message
    return None


def queue_heads(args: argparse.Namespace) -> None:
    """The commit `queue` uses: the experiment of an old-form job (default HEAD, required);
    with a command, only the run's `git_commit` (default HEAD when in a git checkout)."""
    if args.spec is None:
        if args.commit is None:
            args.commit = git_head("no --commit given")
        return
    rev, args.commit = args.commit, None  # not an experiment: never resolved with LIST_RUNS
    args.git_commit = git_commit() if rev is None else _git_rev(rev)


def _git_rev(rev: str) -> str:
    """40 hex as given; HEAD or a prefix as `git rev-parse` reads it in this directory."""
    if len(rev) == 40:
        return rev
    if rev == HEAD:
        return git_head("HEAD given")
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or len(done.stdout.strip()) != 40:
        raise InvalidRequest(f"--commit {rev}: not a commit of a git checkout here")
    return done.stdout.strip()


async def queue(client: Client, args: argparse.Namespace) -> int:
    if args.spec is None:
        emit(NO_COMMAND_NOTE, sys.stderr)
        job = await client.queue_job(args.job, args.commit, args.priority)
        emit(dumps(job.to_json()) if args.json else _queued(job, on_commit=True))
        return 0
    run_id = new_run_id().hex() if args.run is None else args.run
    job = await client.queue_job(args.job, run_id, args.priority, spec=args.spec)
    patch = {"name": args.job} | ({"git_commit": args.git_commit} if args.git_commit else {})
    try:
        await client.update_run(run_id, patch)
    except FetchmlError as exc:
        emit(_queued(job), sys.stderr)
        emit(f"error: run {run_id} not updated: {exc.message}", sys.stderr)
        return 1
    if args.json:
        emit(dumps(job.to_json()))
        return 0
    short = run_id[:12]
    emit(
        "\n".join(
            [
                _queued(job),
                f"run {run_id} ({'new' if args.run is None else 'resumed'}), "
                f"git commit {args.git_commit or '-'}",
                f"follow it: fetchml jobs; fetchml show {short}; fetchml watch {short}",
            ]
        )
    )
    return 0


def _queued(job: Job, on_commit: bool = False) -> str:
    commit = f"commit {job.commit_id}, " if on_commit else ""
    return f"queued {job.job_name} as {job.id} ({commit}priority {job.priority}, {job.status_name})"


async def _status_if_readable(client: Client) -> Status:
    """STATUS, or no jobs for a key without jobs:read (it may still cancel)."""
    try:
        return await client.status()
    except PermissionDenied:
        return Status(user="", role="", jobs=(), queue_length=0, total=0)


async def cancel(client: Client, args: argparse.Namespace) -> int:
    before = await _status_if_readable(client)
    target = cancel_target(before, args.job)
    count = await client.cancel_job(target)
    after = await _status_if_readable(client)
    was_active = {job.id for job in before.jobs if job.status in ACTIVE}
    by_id = any(job.id == target for job in (*before.jobs, *after.jobs))
    gone = [
        job
        for job in after.jobs
        if job.id in was_active
        and job.status is JobStatus.CANCELLED
        and (job.id == target or (not by_id and job.job_name == target))
    ]
    if args.json:
        emit(dumps({"cancelled": count, "ids": [job.id for job in gone]}))
    elif by_id and gone:
        emit(f"cancelled job {target} ({gone[0].job_name})")
    elif not after.user:  # jobs not readable: only the count is known
        emit(f"cancelled {count} job(s) by ID or name {target}")
    else:
        emit("\n".join([f"cancelled {count} job(s) named {target}", *(job.id for job in gone)]))
    return 0


def cancel_target(status: Status, text: str) -> str:
    """`text` itself when it is a job's ID or the name of a queued or running job; else the
    ID of the one queued or running job that starts with it (6 characters or more)."""
    active = [job for job in status.jobs if job.status in ACTIVE]
    if len(text) < MIN_PREFIX or any(text in (job.id, job.job_name) for job in active):
        return text
    found = sorted(f"{job.id} ({job.job_name})" for job in active if job.id.startswith(text))
    if len(found) > 1:
        raise InvalidRequest(f"job ID prefix {text} is ambiguous: {', '.join(found)}")
    return found[0].split()[0] if found else text


async def status(client: Client, args: argparse.Namespace) -> int:
    shown = 0
    while True:
        report = await client.status()
        if args.json:
            emit(dumps(report.to_json()))
        else:
            head = (
                f"user {report.user} ({report.role}): {report.total} job(s) visible"
                + (f", newest {len(report.jobs)} shown" if len(report.jobs) < report.total else "")
                + f", {report.queue_length} queued in total"
            )
            text = head + "\n" + jobs_table(report.jobs)
            emit((CLEAR if args.watch and sys.stdout.isatty() else "") + text)
        shown += 1
        if not args.watch or (args.count and shown >= args.count):
            return 0
        await asyncio.sleep(args.interval)
