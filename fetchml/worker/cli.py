"""`fetchml worker`: the subcommand's options, and running the agent."""

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

from fetchml.client.cliargs import positive, seconds
from fetchml.client.settings import resolve_settings

from .agent import Agent, Options

DEFAULT_GRACE_S = 30.0
HELP = "run queued jobs on this machine (needs a key whose role has jobs:claim)"


def default_workdir() -> Path:
    """$XDG_DATA_HOME/fetchml/jobs, else ~/.local/share/fetchml/jobs."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fetchml" / "jobs"


def gpu_list(text: str) -> tuple[str, ...]:
    """`0,1,2` (indices or GPU UUIDs): distinct, non-empty, no spaces."""
    gpus = tuple(text.split(","))
    if any(not gpu or gpu != gpu.strip() for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(f"expected distinct GPU ids like 0,1,2, got {text!r}")
    return gpus


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    cmd = sub.add_parser(
        "worker",
        help=HELP,
        description=HELP,
        epilog="example:\n  fetchml worker --name gpu-box-1 --gpus 0,1,2,3 --concurrency 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="ws://HOST:PORT/ws, or several, comma-separated (env FETCHML_URL)",
    )
    cmd.add_argument(
        "--api-key", default=argparse.SUPPRESS, help="raw API key (env FETCHML_API_KEY)"
    )
    cmd.add_argument(
        "--name",
        default=socket.gethostname(),
        help="the worker's name, its worker_id (default: the host name)",
    )
    cmd.add_argument(
        "--gpus",
        type=gpu_list,
        default=(),
        metavar="0,1",
        help="GPUs to share out among the slots (CUDA_VISIBLE_DEVICES of each job)",
    )
    cmd.add_argument(
        "--workdir",
        type=Path,
        default=default_workdir(),
        metavar="DIR",
        help="the jobs' directories, DIR/<job id>/ (default: ~/.local/share/fetchml/jobs)",
    )
    cmd.add_argument(
        "--concurrency", type=positive, default=1, metavar="N", help="jobs at once (default 1)"
    )
    cmd.add_argument(
        "--grace",
        type=seconds,
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help=f"time between SIGTERM and SIGKILL when a job is stopped (default {DEFAULT_GRACE_S:g})",
    )


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 after a clean stop, 1 on an error, 2 for a usage error."""
    if args.gpus and args.concurrency > len(args.gpus):
        print(
            f"fetchml worker: error: --concurrency {args.concurrency} is more than the "
            f"{len(args.gpus)} GPU(s) of --gpus (each slot needs its own)",
            file=sys.stderr,
        )
        return 2
    if not args.name or len(args.name.encode()) > 200 or "/" in args.name:
        print("fetchml worker: error: --name must be 1..200 bytes without '/'", file=sys.stderr)
        return 2
    settings = resolve_settings(args.url, args.api_key)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s fetchml worker %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    options = Options(args.name, args.gpus, args.workdir, args.concurrency, args.grace)
    return asyncio.run(Agent(options, settings).run())
