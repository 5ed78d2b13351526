"""`fetchml`: the command-line client.

Every subcommand connects with `--url` / `--api-key` (else FETCHML_URL /
FETCHML_API_KEY, else `api_url` / `api_key` in ~/.ml/config.toml; several URLs
separated by commas are tried in order), prints
aligned tables (or JSON with `--json`), and exits 1 with one line
`error: <the server's message>` on failure (2 for usage errors). A COMMIT or RUN
is 40 hex characters, a unique prefix of 6 or more, or HEAD (`git rev-parse HEAD`).
"""

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fetchml.protocol.rules import CLI_PRIORITY_MAX, CLI_PRIORITY_MIN, DEFAULT_PRIORITY

from .. import __version__
from ..worker import cli as worker_cli
from . import commands, compare, jobcmds, runcmds
from .cliargs import (
    HEAD,
    commit,
    count,
    git_head,
    positive,
    priority,
    prune_value,
    seconds,
    step,
    steps,
    value,
)
from .connection import Client
from .errors import FetchmlError
from .export import FORMATS
from .live import REDRAW_S
from .models import MAX_STEP
from .runs import RUN_STATUSES

Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]

C = "0123456789abcdef0123456789abcdef01234567"
DESCRIPTION = __doc__.split("\n\n", 1)[1] if __doc__ else ""
RUNS_LIMIT = 50
COMPARE_LIMIT = 10


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--url",
        default=default,
        help="ws://HOST:PORT/ws, or several, comma-separated (env FETCHML_URL)",
    )
    parser.add_argument("--api-key", default=default, help="raw API key (env FETCHML_API_KEY)")


def _run_filters(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--project", help="only this project")
    cmd.add_argument("--tag", help="only runs with this tag")
    cmd.add_argument("--status", choices=RUN_STATUSES, help="only runs with this status")
    cmd.add_argument("--user", help="only runs of this user")
    cmd.add_argument("--name", help="only runs whose name contains this text")
    cmd.add_argument(
        "--param",
        type=runcmds.param_pair,
        action="append",
        metavar="KEY=VALUE",
        help="only runs with this param (VALUE read as JSON, else as text); repeatable",
    )
    cmd.add_argument("--oldest", action="store_true", help="oldest first")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fetchml",
        description=DESCRIPTION,
        epilog=f"example:\n  fetchml --url ws://127.0.0.1:9103/ws show {C}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, None)
    parser.add_argument("--version", action="version", version=f"fetchml {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", help="machine-readable JSON output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, handler: Handler, help: str, example: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name,
            aliases=aliases,
            parents=[common],
            help=help,
            description=help,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.set_defaults(handler=handler)
        return cmd

    cmd = add(
        "status",
        jobcmds.status,
        "show jobs (attempts, worker, last heartbeat, command) and queue length",
        "fetchml jobs --watch",
        aliases=["jobs"],
    )
    cmd.add_argument("--watch", action="store_true", help="refresh until interrupted")
    cmd.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    cmd.add_argument("--count", type=int, default=0, help="with --watch: stop after N refreshes")

    cmd = add(
        "queue",
        jobcmds.queue,
        "queue a command for a worker, on a run of its own (without a command: a job "
        "for fetch_ml's own workers on experiment COMMIT)",
        "fetchml queue train-lr --env SEED=1 -- python train.py --lr 0.1",
    )
    cmd.usage = "%(prog)s [-h] [options] job [-- COMMAND [ARG...]]"
    cmd.add_argument("job", help="job name (and the run's name)")
    cmd.add_argument(
        "--commit",
        type=commit,
        help="the run's git commit (default: HEAD in a git checkout); without a command, "
        "the experiment (default: HEAD)",
    )
    cmd.add_argument("--run", type=commit, metavar="RUN", help="resume this run (default: new)")
    cmd.add_argument(
        "--env",
        type=jobcmds.env_pair,
        action="append",
        metavar="KEY=VALUE",
        help="environment variable for the command; repeatable",
    )
    cmd.add_argument(
        "--workdir",
        metavar="DIR",
        help="directory to run in, relative to here (default: the job's own on the worker)",
    )
    cmd.add_argument(
        "--max-attempts",
        type=jobcmds.max_attempts,
        metavar="N",
        help="runs at most N times when its worker dies (default 1)",
    )
    cmd.add_argument(
        "--timeout", type=jobcmds.timeout, metavar="SECONDS", help="kill after (default 0: never)"
    )
    cmd.add_argument(
        "--priority",
        type=priority,
        default=DEFAULT_PRIORITY,
        help=f"{CLI_PRIORITY_MIN}..{CLI_PRIORITY_MAX}, higher first (default {DEFAULT_PRIORITY})",
    )

    cmd = add(
        "cancel",
        jobcmds.cancel,
        "cancel one job by its ID (or a unique prefix), or every job of a name",
        "fetchml cancel 3fa8c1d2   or   fetchml cancel train",
    )
    cmd.add_argument("job", metavar="ID-or-NAME")

    cmd = add(
        "prune",
        commands.prune,
        "remove old experiments: shows what goes and asks first",
        "fetchml prune --keep 20 --dry-run",
    )
    which = cmd.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--keep", type=prune_value, metavar="N", help="keep the newest N experiments"
    )
    which.add_argument(
        "--older-than",
        type=prune_value,
        metavar="DAYS",
        help="remove experiments older than DAYS",
    )
    how = cmd.add_mutually_exclusive_group()
    how.add_argument("-y", "--yes", action="store_true", help="do not ask (needed without a tty)")
    how.add_argument("--dry-run", action="store_true", help="only print what would be removed")

    add("ls", commands.ls, "list experiments, newest first", "fetchml ls --json")

    cmd = add(
        "runs",
        runcmds.runs,
        "list runs, newest first, with filters",
        "fetchml runs --project cifar --param-cols lr,batch --metric loss",
    )
    _run_filters(cmd)
    cmd.add_argument("--param-cols", metavar="K1,K2", help="show these params as columns")
    cmd.add_argument("--metric", metavar="NAME", help="show the latest value of this metric")
    cmd.add_argument(
        "--ids", dest="only_ids", action="store_true", help="only the IDs, one a line (for scripts)"
    )
    cmd.add_argument(
        "--limit", type=positive, default=RUNS_LIMIT, help=f"at most N runs (default {RUNS_LIMIT})"
    )

    cmd = add(
        "show",
        commands.show,
        "a run's (or experiment's) metadata, document and latest value per metric",
        f"fetchml show {C[:8]}",
    )
    cmd.add_argument("commit", type=commit, metavar="RUN")

    cmd = add(
        "compare",
        compare.compare,
        "params side by side (differences marked) and last/min/max of every metric",
        "fetchml compare 3fa8c1d2 9b0e44aa 51c2e7f0   or   fetchml compare --tag sweep",
    )
    cmd.add_argument("ids", nargs="*", type=commit, metavar="RUN")
    _run_filters(cmd)
    cmd.add_argument(
        "--limit",
        type=positive,
        default=COMPARE_LIMIT,
        help=f"at most N runs from the filter (default {COMPARE_LIMIT})",
    )

    cmd = add(
        "tag",
        runcmds.tag,
        "add (+TAG) and remove (-TAG) a run's tags; none given: print them",
        "fetchml tag 3fa8c1d2 +best -baseline",
    )
    cmd.add_argument("run", type=commit, metavar="RUN")
    cmd.add_argument("changes", nargs="*", metavar="+TAG|-TAG")

    cmd = add("note", runcmds.note, "set a run's notes", 'fetchml note 3fa8c1d2 "lr too high"')
    cmd.add_argument("run", type=commit, metavar="RUN")
    cmd.add_argument("text", help='the notes ("" clears them)')

    cmd = add("log", commands.log, "log one metric value", f"fetchml log {C} loss 0.25 --step 100")
    cmd.add_argument("commit", type=commit)
    cmd.add_argument("name")
    cmd.add_argument("value", type=value)
    cmd.add_argument("--step", type=step, default=0, help="step (default 0)")
    cmd.add_argument("--create", action="store_true", help="create the experiment if missing")

    cmd = add(
        "query",
        commands.query,
        "print metrics, optionally filtered and downsampled",
        f"fetchml query {C} --name loss --steps 1000:2000 --points 100",
    )
    cmd.add_argument("commit", type=commit)
    cmd.add_argument("--name", default="", help="only this metric")
    cmd.add_argument("--steps", type=steps, default=(0, MAX_STEP), metavar="A:B", help="step range")
    cmd.add_argument(
        "--points",
        type=positive,
        default=0,
        metavar="N",
        help="at most N points per metric (LTTB)",
    )

    cmd = add(
        "watch",
        commands.watch,
        "live table (or chart) of the latest values",
        f"fetchml watch {C} --name loss --plot",
    )
    cmd.add_argument("commit", type=commit)
    cmd.add_argument("--name", default="", help="only this metric")
    cmd.add_argument("--plot", action="store_true", help="terminal chart (needs plotext)")
    cmd.add_argument("--from-index", type=count, default=0, metavar="N", help="start at record N")
    cmd.add_argument(
        "--exit-after", type=count, default=0, metavar="N", help="stop after N records"
    )
    cmd.add_argument(
        "--wait", action="store_true", help="wait for an experiment that does not exist yet"
    )
    cmd.add_argument(
        "--interval",
        type=seconds,
        default=REDRAW_S,
        metavar="SECONDS",
        help=f"redraw at most this often (default {REDRAW_S})",
    )

    cmd = add(
        "export",
        commands.export,
        "write the metrics of one or more runs to a file (several: a `run` ID column)",
        f"fetchml export {C} --format parquet -o metrics.parquet",
    )
    cmd.add_argument("ids", nargs="+", type=commit, metavar="RUN")
    cmd.add_argument("--format", choices=FORMATS, help="default: from the file extension")
    cmd.add_argument("-o", "--output", required=True, metavar="FILE")
    cmd.add_argument("--name", default="", help="only this metric")
    cmd.add_argument("--steps", type=steps, default=(0, MAX_STEP), metavar="A:B", help="step range")
    bar = cmd.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="always show progress")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")

    add("whoami", commands.whoami, "show your user, role and permissions", "fetchml whoami")
    worker_cli.add_parser(sub)
    return parser


async def _run(args: argparse.Namespace) -> int:
    handler: Handler = args.handler
    async with Client.connect(args.url, args.api_key) as client:
        if getattr(args, "commit", None):
            args.commit = await commands.resolve_commit(client, args.commit)
        if getattr(args, "run", None):
            args.run = await commands.resolve_commit(client, args.run, "run")
        if getattr(args, "ids", None):
            args.ids = [await commands.resolve_commit(client, i, "run") for i in args.ids]
        return await handler(client, args)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; `tag`'s -TAG words look like options, so they come back unrecognized."""
    parser = build_parser()
    words, command = jobcmds.split_command(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(words)
    if args.command == "queue":
        problem = jobcmds.check_queue(args, command)
        if problem:
            parser.error(problem)
    if args.command == "tag":
        words = [*args.changes, *extra]
        if any(w.startswith("--") for w in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        try:
            args.changes = runcmds.tag_changes(words)
        except ValueError as exc:
            parser.error(str(exc))
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _heads(args: argparse.Namespace) -> None:
    """Replace HEAD by `git rev-parse HEAD` wherever a commit or run is taken."""
    if args.command == "queue":
        jobcmds.queue_heads(args)
    for field in ("commit", "run"):
        if getattr(args, field, None) == HEAD:
            setattr(args, field, git_head("HEAD given"))
    ids = getattr(args, "ids", None) or []
    if HEAD in ids:
        args.ids = [git_head("HEAD given") if i == HEAD else i for i in ids]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "worker":
            return worker_cli.run(args)
        _heads(args)
        return asyncio.run(_run(args))
    except FetchmlError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head and the like
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
