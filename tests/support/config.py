"""The one config builder: a raw (YAML-ready) config with the test keys, everything under
one directory; written to a file for daemon processes, parsed for in-process daemons."""

from pathlib import Path
from typing import Any

import yaml

from fetchml.server.config import Config, parse_config

from .keys import KEYS, key_entry, key_hash


def raw_config(home: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """Port 0 on 127.0.0.1, KEYS, data, jobs and audit under `home`; `sections` update it
    key by key (`server={"port": 8080}` keeps the host)."""
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "storage": {
            "base_path": str(home / "experiments"),
            "jobs_db": str(home / "jobs.sqlite3"),
        },
        "auth": {
            "api_keys": {user: key_entry(key, role) for user, (role, key) in KEYS.items()},
            "roles": {"root": {"permissions": ["*"], "scope": "all"}},
        },
        "logging": {"audit_file": str(home / "audit.jsonl")},
    }
    return updated(raw, **sections)


def updated(raw: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """`raw` with each section updated key by key (in place; returned for chaining)."""
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_config(home: Path, **sections: dict[str, Any]) -> Config:
    return parse_config(raw_config(home, **sections))


CUSTOM_USERS = {
    "pat": ("pruner", "fml_test_pat_key"),
    "olga": ("observer", "fml_test_olga_key"),
    "rita": ("runner", "fml_test_rita_key"),
}
"""Users of custom roles (custom_config), beside KEYS."""
CUSTOM_ROLES = {
    "root": {"permissions": ["*"], "scope": "all"},
    "pruner": {"permissions": ["jobs:read", "jobs:delete"], "scope": "own"},
    "observer": {"permissions": []},  # scope defaults to own
    "runner": {"permissions": ["jobs:read", "jobs:claim"], "scope": "own"},
    # A built-in role redefined: analysts may now create, and see only their own.
    "analyst": {"permissions": ["jobs:read", "jobs:create"], "scope": "own"},
}


def custom_config(home: Path) -> Config:
    """make_config with CUSTOM_ROLES, and CUSTOM_USERS as well as KEYS."""
    users = {**KEYS, **CUSTOM_USERS}
    api_keys = {user: key_entry(key, role) for user, (role, key) in users.items()}
    return make_config(home, auth={"api_keys": api_keys, "roles": CUSTOM_ROLES})


def custom_hash(user: str) -> bytes:
    return key_hash(CUSTOM_USERS[user][1])
