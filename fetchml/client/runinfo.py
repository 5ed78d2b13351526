"""What a MetricLogger tells the daemon about its run: its ID, params, tags, git commit, host.

Helpers run in the caller's thread, so that bad input raises there:
`start_patch` is the UPDATE_RUN that starts a run; `flatten_params` turns
nested parameters into the flat `params` object of the run document (keys
joined with "."), `check_tags` the tag list, `check_timestamp` a caller's
time for a point; `git_commit` asks git for the working directory's HEAD
(None outside a repository, without git, or when git does not answer within
a second).
"""

import json
import math
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from typing import Any

from fetchml.protocol.metrics import MAX_TIMESTAMP, MIN_TIMESTAMP
from fetchml.protocol.rules import COMMIT_SIZE

from .errors import InvalidRequest
from .models import parse_commit
from .runs import json_text
from .settings import RUN_ID_ENV, run_id_from_env

MAX_PARAMS = 1000
MAX_KEY_BYTES = 255
MAX_STRING_BYTES = 4096
MAX_TAGS = 100
MAX_TAG_BYTES = 64
MAX_NOTES_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_PROJECT_BYTES = 128
MAX_SAFE_INT = 2**53
GIT_TIMEOUT_S = 1.0
MAX_CLOCK_AHEAD_S = 300
"""The daemon refuses a point more than this ahead of its clock."""
MAX_PATCH_BYTES = 0xFFFF
"""An UPDATE_RUN's patch is a str16."""

ParamValue = str | int | float | bool


def new_run_id() -> bytes:
    """A fresh random run ID (20 bytes)."""
    return os.urandom(COMMIT_SIZE)


def run_id_bytes(run_id: str | bytes, what: str) -> bytes:
    """A run ID as its 20 bytes; InvalidRequest unless 40 hex characters (or 20 bytes)."""
    try:
        return parse_commit(run_id)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what}: {exc.message}") from None


def pick_experiment(commit: str | bytes | None, run_id: str | bytes | None) -> tuple[bytes, bool]:
    """The experiment a logger writes, and whether it is a fresh run: a commit (the old
    form), else `run_id`, else FETCHML_RUN_ID, else a new random ID."""
    if commit is not None:
        if not isinstance(commit, str | bytes):
            raise InvalidRequest(f"commit must be 40 hex characters, got {commit!r}")
        if run_id is not None:
            raise InvalidRequest("give a commit or a run_id, not both")
        return parse_commit(commit), False
    if run_id is not None:
        return run_id_bytes(run_id, "run_id"), False
    if (env_id := run_id_from_env()) is not None:
        return run_id_bytes(env_id, RUN_ID_ENV), False
    return new_run_id(), True


def param_value(value: Any) -> ParamValue:
    """A parameter as the run document stores it: bools, JSON-safe numbers and strings as
    they are; None as "None"; NaN and infinities as "NaN", "Infinity", "-Infinity"; lists
    and tuples as compact JSON text; anything else as str()."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None:
        return "None"
    if isinstance(value, list | tuple):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return str(value)


def flatten_params(params: Mapping[Any, Any], known: Iterable[str] = ()) -> dict[str, ParamValue]:
    """Nested mappings flattened with "." ({"opt": {"lr": 0.1}} -> {"opt.lr": 0.1}), values
    as `param_value` gives them. InvalidRequest naming the key for a key of 0 or more than
    255 bytes, a string over 4,096 bytes, or more than 1,000 params (with the `known` ones)."""
    flat: dict[str, ParamValue] = {}

    def walk(items: Mapping[Any, Any], prefix: str) -> None:
        for key, value in items.items():
            path = prefix + str(key)
            if isinstance(value, Mapping):
                walk(value, path + ".")
                continue
            size = len(path.encode())
            if not 1 <= size <= MAX_KEY_BYTES:
                raise InvalidRequest(f"params.{path}: a key must be 1..255 bytes, got {size}")
            flat[path] = converted = param_value(value)
            if isinstance(converted, str) and len(converted.encode()) > MAX_STRING_BYTES:
                raise InvalidRequest(
                    f"params.{path}: a value must be at most {MAX_STRING_BYTES} bytes, "
                    f"got {len(converted.encode())}"
                )

    if not isinstance(params, Mapping):
        raise InvalidRequest(f"params must be a mapping, got {type(params).__name__}")
    walk(params, "")
    total = len(set(known).union(flat))
    if total > MAX_PARAMS:
        raise InvalidRequest(f"params: at most {MAX_PARAMS} params, got {total}")
    return flat


def check_text(value: Any, what: str, low: int, high: int) -> str:
    """A string of `low`..`high` UTF-8 bytes; InvalidRequest naming `what` otherwise."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what}: must be a str, got {type(value).__name__}")
    size = len(value.encode())
    if not low <= size <= high:
        raise InvalidRequest(f"{what}: must be {low}..{high} bytes, got {size}")
    return value


def check_tags(tags: Iterable[str]) -> list[str]:
    """Distinct tags of 1..64 bytes, at most 100, in the order given (repeats dropped)."""
    if isinstance(tags, str):
        raise InvalidRequest("tags: must be an iterable of str, not one str")
    out = list(dict.fromkeys(check_text(tag, "tags", 1, MAX_TAG_BYTES) for tag in tags))
    if len(out) > MAX_TAGS:
        raise InvalidRequest(f"tags: at most {MAX_TAGS} tags, got {len(out)}")
    return out


def git_commit(cwd: str | None = None) -> str | None:
    """HEAD of the git checkout holding `cwd` (default: the working directory), or None."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    head = done.stdout.strip()
    if done.returncode != 0 or len(head) != 2 * COMMIT_SIZE:
        return None
    try:
        return bytes.fromhex(head).hex()
    except ValueError:
        return None


def host_name() -> str:
    """This machine's name, cut to 255 bytes."""
    return socket.gethostname().encode()[:MAX_NAME_BYTES].decode(errors="ignore")


def patch_size(patch: Mapping[str, Any]) -> int:
    """The UTF-8 length of a patch's JSON text as the client sends it."""
    return len(json_text(patch, "patch").encode())


def check_patch(patch: dict[str, Any]) -> dict[str, Any]:
    """A patch that fits in one UPDATE_RUN; InvalidRequest otherwise."""
    if (size := patch_size(patch)) > MAX_PATCH_BYTES:
        raise InvalidRequest(f"run: update too large ({size} > {MAX_PATCH_BYTES} bytes)")
    return patch


def start_patch(
    name: str | None,
    project: str,
    params: Mapping[str, Any] | None,
    tags: Iterable[str] | None,
    notes: str,
) -> dict[str, Any]:
    """The UPDATE_RUN that starts a run: what the caller gave, the git commit when one is
    detected, host, pid, status "running"."""
    patch: dict[str, Any] = {}
    if name is not None:
        patch["name"] = check_text(name, "name", 1, MAX_NAME_BYTES)
    if check_text(project, "project", 0, MAX_PROJECT_BYTES):
        patch["project"] = project
    if params:
        patch["params"] = flatten_params(params)
    if tags is not None:
        patch["tags"] = check_tags(tags)
    if check_text(notes, "notes", 0, MAX_NOTES_BYTES):
        patch["notes"] = notes
    if (head := git_commit()) is not None:
        patch["git_commit"] = head
    return patch | {"host": host_name(), "pid": os.getpid(), "status": "running"}


def check_timestamp(timestamp: object) -> float:
    """A caller's timestamp (Unix seconds): a real number the wire carries, not more than
    MAX_CLOCK_AHEAD_S ahead of this machine's clock; InvalidRequest otherwise."""
    if not isinstance(timestamp, bool) and isinstance(timestamp, int | float):
        value = float(timestamp)
        if (
            math.isfinite(value)
            and MIN_TIMESTAMP <= value < MAX_TIMESTAMP
            and value <= time.time() + MAX_CLOCK_AHEAD_S
        ):
            return value
    raise InvalidRequest(
        f"timestamp must be Unix seconds from {MIN_TIMESTAMP} to at most "
        f"{MAX_CLOCK_AHEAD_S} s from now, got {timestamp!r}"
    )
