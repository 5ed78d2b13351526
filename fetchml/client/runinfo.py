"""What a MetricLogger tells the daemon about its run: its ID, params, tags, git commit, host.

Pure helpers, run in the caller's thread so that bad input raises there:
`flatten_params` turns nested parameters into the flat `params` object of the
run document (keys joined with "."), `check_tags` the tag list, and
`git_commit` asks git for the working directory's HEAD (None outside a
repository, without git, or when git does not answer within a second).
"""

import json
import math
import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

from fetchml.protocol.rules import COMMIT_SIZE

from .errors import InvalidRequest
from .models import parse_commit
from .runs import json_text

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
