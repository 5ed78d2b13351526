"""`fetchml-server`: serve, check-config, keygen, hash-key, inspect, fsck."""

import argparse
import hashlib
import secrets
import sys
import traceback
from pathlib import Path

EXAMPLES = """examples:
  fetchml-server serve --config configs/dev.yaml
  fetchml-server check-config /etc/fetchml/config.yaml
  fetchml-server keygen --user alice --role researcher
  echo -n "$KEY" | fetchml-server hash-key
  fetchml-server inspect --base-path data/experiments --json
  fetchml-server fsck --base-path data/experiments --repair
"""


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fetchml-server",
        description="fetchml daemon and operator commands",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon", epilog=EXAMPLES.splitlines()[1])
    serve.add_argument("--config", required=True, type=Path, help="YAML config file")
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", type=Path)
    keygen = sub.add_parser("keygen", help="make a new API key and print its config entry")
    keygen.add_argument("--user", required=True)
    keygen.add_argument("--role", required=True)
    sub.add_parser("hash-key", help="read a raw key on stdin, print its SHA-256 (64 hex)")
    inspect = sub.add_parser("inspect", help="print experiments of a data directory")
    inspect.add_argument("--base-path", required=True, type=Path)
    inspect.add_argument("commit", nargs="?")
    inspect.add_argument("--json", action="store_true", help="one object keyed by commit")
    fsck = sub.add_parser("fsck", help="check metrics and metadata files; exit 1 on problems")
    fsck.add_argument("--base-path", required=True, type=Path)
    fsck.add_argument("--repair", action="store_true", help="truncate torn or corrupt tails")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    match args.command:
        case "serve":
            from .app import run

            return run(args.config)
        case "check-config":
            from .config import ConfigError, load_config

            try:
                load_config(args.config)
            except ConfigError as exc:
                print(f"{args.config}: {exc}", file=sys.stderr)
                return 1
            print(f"{args.config}: ok")
            return 0
        case "keygen":
            key = "fml_" + secrets.token_urlsafe(32)
            print(f"API key for {args.user} (shown once, keep it secret):\n  {key}\n")
            print("Add to the config under auth.api_keys:")
            print(f'  {args.user}: {{hash: "{hash_key(key)}", role: {args.role}}}')
            return 0
        case "hash-key":
            raw = sys.stdin.read().strip()
            if not raw:
                print("error: no key on stdin", file=sys.stderr)
                return 1
            print(hash_key(raw))
            return 0
        case "inspect" | "fsck":
            return _tool(args)
    return 2


def _tool(args: argparse.Namespace) -> int:
    """inspect and fsck: 0 clean, 1 problems found, 2 the tool itself failed."""
    from . import tools

    try:
        if args.command == "inspect":
            return tools.inspect(args.base_path, args.commit, args.json)
        return tools.fsck(args.base_path, args.repair)
    except BrokenPipeError:
        raise
    except Exception as exc:  # not 1: that would read as "problems found"
        if not isinstance(exc, OSError):
            traceback.print_exc()
        print(f"error: {args.command} failed: {exc}", file=sys.stderr)
        return 2


def entry() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into head and the like
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    entry()
