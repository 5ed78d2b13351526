"""`fetchml-server`: serve, check-config, keygen, hash-key, inspect, fsck."""

import argparse
import hashlib
import json
import re
import secrets
import sys
import traceback
from pathlib import Path

import yaml

EXAMPLES = """examples:
  fetchml-server serve --config configs/dev.yaml
  fetchml-server check-config /etc/fetchml/config.yaml
  fetchml-server keygen --user alice --role researcher [--config /etc/fetchml/config.yaml]
  echo -n "$KEY" | fetchml-server hash-key
  fetchml-server inspect --base-path data/experiments --json
  fetchml-server fsck --base-path data/experiments --repair
"""


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def yaml_scalar(text: str) -> str:
    """`text` as a YAML flow scalar: plain when YAML reads it back as that very string
    (not `yes`, `null`, `123`...), else double-quoted (a JSON string is valid YAML)."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.@-]*", text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text, ensure_ascii=False)


def keygen(user: str, role: str, config_path: Path | None) -> int:
    """Print a new key and its line for `auth.api_keys` (indented as in configs/example.yaml)."""
    from .config import BUILTIN_ROLES, ConfigError, load_config

    roles = BUILTIN_ROLES
    if config_path is not None:
        try:
            roles = load_config(config_path).auth.roles
        except ConfigError as exc:
            print(f"{config_path}: {exc}", file=sys.stderr)
            return 1
    if not user:
        print("error: --user must not be empty", file=sys.stderr)
        return 2
    if role not in roles:
        hint = "" if config_path else " (custom roles need --config FILE)"
        print(
            f"error: unknown role {role!r}; roles: {', '.join(sorted(roles))}{hint}",
            file=sys.stderr,
        )
        return 2
    key = "fml_" + secrets.token_urlsafe(32)
    print(f"API key for {user} (shown once, keep it secret):\n  {key}\n")
    print("Add this line under auth.api_keys in the config:")
    print(f'    {yaml_scalar(user)}: {{hash: "{hash_key(key)}", role: {yaml_scalar(role)}}}')
    return 0


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
    keygen.add_argument("--config", type=Path, help="config file whose custom roles are allowed")
    sub.add_parser("hash-key", help="read a raw key on stdin, print its SHA-256 (64 hex)")
    inspect = sub.add_parser("inspect", help="print experiments of a data directory")
    inspect.add_argument("--base-path", required=True, type=Path)
    inspect.add_argument("commit", nargs="?")
    inspect.add_argument("--json", action="store_true", help="one object keyed by commit")
    fsck = sub.add_parser("fsck", help="check metrics and metadata files; exit 1 on problems")
    fsck.add_argument("--base-path", required=True, type=Path)
    fsck.add_argument("--repair", action="store_true", help="truncate torn or corrupt tails")
    fsck.add_argument(
        "--config",
        type=Path,
        help="the daemons' config: with cluster.redis_url, --repair "
        "refuses while any cluster node is alive in Redis",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    match args.command:
        case "serve":
            from .app import run

            return run(args.config)
        case "check-config":
            from .config import ConfigError, config_warnings, load_config

            try:
                config = load_config(args.config)
            except ConfigError as exc:
                print(f"{args.config}: {exc}", file=sys.stderr)
                return 1
            for warning in config_warnings(config):
                print(f"{args.config}: warning: {warning}", file=sys.stderr)
            print(f"{args.config}: ok")
            return 0
        case "keygen":
            return keygen(args.user, args.role, args.config)
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
        if args.repair and args.config is not None and not _no_live_nodes(args.config):
            return 2
        return tools.fsck(args.base_path, args.repair)
    except BrokenPipeError:
        raise
    except Exception as exc:  # not 1: that would read as "problems found"
        if not isinstance(exc, OSError):
            traceback.print_exc()
        print(f"error: {args.command} failed: {exc}", file=sys.stderr)
        return 2


def _no_live_nodes(config_path: Path) -> bool:
    """True when the config is standalone or no cluster node is alive in its Redis (the
    data directory's flock only sees the daemons on this machine); else says why not."""
    import anyio

    from .cluster import RedisDown, live_nodes
    from .config import ConfigError, load_config

    try:
        cluster = load_config(config_path).cluster
    except ConfigError as exc:
        print(f"{config_path}: {exc}", file=sys.stderr)
        return False
    if not cluster.enabled:
        return True
    try:
        nodes = anyio.run(live_nodes, cluster)
    except RedisDown as exc:
        print(f"error: cannot reach Redis to check for live nodes: {exc}", file=sys.stderr)
        return False
    if nodes:
        names = ", ".join(f"{n['name']} (pid {n['pid']} on {n['host']})" for n in nodes)
        print(
            f"error: cluster nodes are alive: {names}: stop them before --repair", file=sys.stderr
        )
        return False
    return True


def entry() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into head and the like
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    entry()
