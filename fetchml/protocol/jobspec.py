"""A job's spec (QUEUE_JOB_SPEC): what a worker runs, checked at queue time, no I/O.

The spec is a strict JSON object (protocol/strictjson.py) with these keys; every
complaint names its dotted path (`spec.command: ...`, `spec.env.HOME: ...`).
"""

from typing import Any

from .strictjson import decode, fail, is_int, items, plain

MAX_COMMAND_WORDS = 64
MAX_ATTEMPTS = 10
MAX_TIMEOUT_S = 2**31 - 1
DEFAULTS: dict[str, Any] = {"env": {}, "workdir": None, "max_attempts": 1, "timeout_s": 0}
"""What a spec holds for each key it leaves out (`command` has none: it is required)."""


def _command(value: Any) -> str | None:
    if (
        isinstance(value, list)
        and 1 <= len(value) <= MAX_COMMAND_WORDS
        and all(isinstance(word, str) for word in value)
        and value[0]
    ):
        return None
    return f"must be 1..{MAX_COMMAND_WORDS} strings, the first non-empty"


def _env(value: Any) -> str | None:
    """Checked key by key in parse_spec, so a message can name the key."""
    return None if isinstance(value, dict) else "must be an object of strings"


def _env_entry(key: str, value: Any) -> str | None:
    if not key or "=" in key:
        return "the name must be non-empty without '='"
    return None if isinstance(value, str) else "must be a string"


def _workdir(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "must be a string or null"


def _integer(low: int, high: int) -> Any:
    def check(value: Any) -> str | None:
        return (
            None if is_int(value) and low <= value <= high else f"must be an integer {low}..{high}"
        )

    return check


_FIELDS = {
    "command": _command,
    "env": _env,
    "workdir": _workdir,
    "max_attempts": _integer(1, MAX_ATTEMPTS),
    "timeout_s": _integer(0, MAX_TIMEOUT_S),
}


def parse_spec(text: str) -> dict[str, Any]:
    """The spec with every default filled in: command, env, workdir, max_attempts,
    timeout_s. MalformedRequest (INVALID_REQUEST on the wire) for any defect."""
    found: dict[str, Any] = {}
    for where, key, raw in items(decode(text, "spec"), "spec"):
        value = found[key] = plain(raw, where)
        check = _FIELDS.get(key)
        if check is None:
            raise fail(where, "unknown key")
        why = check(value)
        if why:
            raise fail(where, why)
        for name, item in value.items() if key == "env" else ():
            why = _env_entry(name, item)
            if why:
                raise fail(f"{where}.{name}", why)
    if "command" not in found:
        raise fail("spec.command", "required")
    return {key: found.get(key, DEFAULTS.get(key)) for key in _FIELDS}
