"""Run documents and run filters: the rules of UPDATE_RUN's patch, run.json and
LIST_RUNS's filter, with no I/O. Texts are strict JSON (protocol/strictjson.py).
"""

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import MalformedRequest
from .strictjson import Pairs, decode, fail, is_int, items, parse_object, plain

MAX_DOCUMENT_BYTES = 65536
STATUSES = ("running", "finished", "failed", "crashed")
TERMINAL = frozenset({"finished", "failed", "crashed"})
MAX_PARAMS = 1000
SERVER_KEYS = ("created_at", "started_at", "ended_at", "heartbeat_at")
_HEX = re.compile(r"[0-9a-f]+")


def _checked_params(raw: Pairs, patch: bool) -> dict[str, Any]:
    """A patch's or filter's `params`, each entry checked strictly and then by its rule."""
    params: dict[str, Any] = {}
    for where, key, item in items(raw, "params"):
        value = params[key] = plain(item, where)
        _param(where, key, value, patch)
    return params


# -- the run document ------------------------------------------------------------------


def _size(text: str) -> int:
    return len(text.encode())


def _text(low: int, high: int) -> Any:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and low <= _size(value) <= high:
            return None
        return f"must be a string of {low}..{high} bytes"

    return check


def _git_commit(value: Any) -> str | None:
    if isinstance(value, str) and len(value) == 40 and _HEX.fullmatch(value):
        return None
    return "must be 40 lowercase hex characters"


def _pid(value: Any) -> str | None:
    return None if is_int(value) and 0 <= value < 2**31 else "must be an integer 0..2147483647"


def _status(value: Any) -> str | None:
    return None if value in STATUSES else f"must be one of {', '.join(STATUSES)}"


def _tags(value: Any) -> str | None:
    if not isinstance(value, list) or len(value) > 100:
        return "must be an array of at most 100 strings"
    for tag in value:
        if not isinstance(tag, str) or not 1 <= _size(tag) <= 64:
            return f"each tag must be a string of 1..64 bytes, got {tag!r}"
    if len(set(value)) != len(value):
        return "tags must be distinct"
    return None


def _param_value(value: Any) -> str | None:
    if isinstance(value, str):
        return None if _size(value) <= 4096 else "must be a string of at most 4096 bytes"
    if isinstance(value, bool | int | float):
        return None
    return "must be a string, a number or a boolean"


def _param(where: str, key: str, value: Any, patch: bool) -> None:
    if not 1 <= _size(key) <= 255:
        raise fail(where, "a param's key must be 1..255 bytes")
    if value is None and patch:
        return
    why = _param_value(value)
    if why:
        raise fail(where, why)


def _params(value: Any, path: str, patch: bool) -> None:
    if not isinstance(value, dict):
        raise fail(path, "must be an object")
    for key, item in value.items():
        _param(f"{path}.{key}", key, item, patch)


_CLIENT_FIELDS: dict[str, tuple[Any, Any, bool]] = {
    # key: (check, default, null allowed in a document)
    "name": (_text(1, 255), None, False),
    "project": (_text(0, 128), "", False),
    "git_commit": (_git_commit, None, True),
    "params": (None, None, False),
    "tags": (_tags, None, False),
    "notes": (_text(0, 4096), "", False),
    "host": (_text(0, 255), None, True),
    "pid": (_pid, None, True),
    "status": (_status, None, True),
    "output": (_text(0, 16384), "", False),
}
KEYS = (*_CLIENT_FIELDS, *SERVER_KEYS)
"""Every key of a run document, in the order the server writes them."""


def _check_field(key: str, value: Any, patch: bool) -> None:
    if key == "params":
        _params(value, key, patch)
        return
    why = _CLIENT_FIELDS[key][0](value)
    if why:
        raise fail(key, why)


def default_value(key: str, default_name: str) -> Any:
    if key == "name":
        return default_name
    if key == "params":
        return {}
    if key == "tags":
        return []
    return _CLIENT_FIELDS[key][1] if key in _CLIENT_FIELDS else None


def parse_patch(text: str) -> dict[str, Any]:
    """UPDATE_RUN's patch, checked on its own (the merged document's limits come later)."""
    patch: dict[str, Any] = {}
    for where, key, raw in items(decode(text, "patch"), ""):
        if key == "params" and isinstance(raw, Pairs):
            patch[key] = _checked_params(raw, patch=True)
            continue
        value = patch[key] = plain(raw, where)
        if key == "heartbeat":
            if value is not True:
                raise fail(key, "must be true")
        elif key in SERVER_KEYS:
            raise fail(key, "written by the server")
        elif key not in _CLIENT_FIELDS:
            raise fail(key, "unknown key")
        elif value is not None:
            _check_field(key, value, patch=True)
    return patch


def apply_patch(
    stored: dict[str, Any] | None, patch: dict[str, Any], *, default_name: str, now: int
) -> dict[str, Any]:
    """The document after a merge patch (RFC 7396; `params` merges key by key and a null
    param deletes it), with the server's times set. `stored` None: run.json is created."""
    if stored is None:
        doc = {key: default_value(key, default_name) for key in KEYS}
        doc["created_at"] = now
    else:
        doc = dict(stored)
    before = doc["status"]
    for key, value in patch.items():
        if key == "heartbeat":
            continue
        if value is None:
            doc[key] = default_value(key, default_name)
        elif key == "params":
            params = dict(doc["params"])
            for name, item in value.items():
                if item is None:
                    params.pop(name, None)
                else:
                    params[name] = item
            doc["params"] = params
        else:
            doc[key] = list(value) if key == "tags" else value
    after = doc["status"]
    if after != before:
        if after == "running":
            if doc["started_at"] is None:
                doc["started_at"] = now
            doc["ended_at"] = None
        elif after in TERMINAL:
            doc["ended_at"] = now
    doc["heartbeat_at"] = now
    if len(doc["params"]) > MAX_PARAMS:
        raise fail("params", f"more than {MAX_PARAMS} keys ({len(doc['params'])})")
    size = _size(dumps(doc))
    if size > MAX_DOCUMENT_BYTES:
        raise fail("run", f"document too large ({size} > {MAX_DOCUMENT_BYTES})")
    return doc


def dumps(doc: dict[str, Any]) -> str:
    """The server's compact serialization; its UTF-8 length is the document's size."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def load_document(raw: bytes) -> dict[str, Any] | None:
    """run.json's bytes as a document with every key, or None when unreadable (over
    64 KiB, not UTF-8, not a JSON object, or a key of the table holding a wrong value)."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        return None
    try:
        found = parse_object(raw.decode(), "run")
        doc = {key: found.get(key, default_value(key, "")) for key in KEYS}
        for key in _CLIENT_FIELDS:
            if doc[key] is not None or not _CLIENT_FIELDS[key][2]:
                _check_field(key, doc[key], patch=False)
        for key in SERVER_KEYS:
            if doc[key] is not None and not is_int(doc[key]):
                return None
    except (UnicodeDecodeError, MalformedRequest):
        return None
    return doc


# -- LIST_RUNS's filter ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFilter:
    user: str | None = None
    name: str | None = None
    project: str | None = None
    status: str | None = None
    tag: str | None = None
    git_commit: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    order: str = "newest"
    limit: int = 100
    offset: int = 0

    @property
    def needs_document(self) -> bool:
        """Only experiments with a readable run document can match."""
        return bool(
            self.project is not None
            or self.status is not None
            or self.tag is not None
            or self.git_commit is not None
            or self.params
        )

    def matches(
        self, exp_id: str, user: str | None, job_name: str | None, doc: dict[str, Any] | None
    ) -> bool:
        """`doc` is the document as reported (a derived `crashed` already applied)."""
        if self.user is not None and user != self.user:
            return False
        if self.id is not None and not exp_id.startswith(self.id):
            return False
        if self.name is not None:
            label = doc["name"] if doc is not None else job_name
            if label is None or self.name not in label:
                return False
        if doc is None:
            return not self.needs_document
        commit = doc["git_commit"]
        return (
            (self.project is None or doc["project"] == self.project)
            and (self.status is None or doc["status"] == self.status)
            and (self.tag is None or self.tag in doc["tags"])
            and (self.git_commit is None or (commit or "").startswith(self.git_commit))
            and all(
                key in doc["params"] and same_value(doc["params"][key], want)
                for key, want in self.params.items()
            )
        )


def same_value(have: Any, want: Any) -> bool:
    """JSON equality of param values: same type, strings by code points, booleans only with
    booleans, numbers by binary64 value (1 equals 1.0)."""
    if isinstance(have, bool) or isinstance(want, bool):
        return isinstance(have, bool) and isinstance(want, bool) and have == want
    if isinstance(have, str) or isinstance(want, str):
        return isinstance(have, str) and isinstance(want, str) and have == want
    return float(have) == float(want)


def _hex_prefix(value: Any) -> str | None:
    if isinstance(value, str) and 1 <= len(value) <= 40 and _HEX.fullmatch(value):
        return None
    return "must be 1..40 lowercase hex characters"


def _any_string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


def _limit(value: Any) -> str | None:
    return None if is_int(value) and 1 <= value <= 1000 else "must be an integer 1..1000"


def _offset(value: Any) -> str | None:
    return None if is_int(value) and value >= 0 else "must be an integer >= 0"


def _order(value: Any) -> str | None:
    return None if value in ("newest", "oldest") else "must be newest or oldest"


def _not_object(value: Any) -> str:
    return "must be an object"


_FILTER_FIELDS = {
    "params": _not_object,
    "user": _any_string,
    "name": _any_string,
    "project": _any_string,
    "status": _status,
    "tag": _text(1, 64),
    "git_commit": _hex_prefix,
    "id": _hex_prefix,
    "order": _order,
    "limit": _limit,
    "offset": _offset,
}


def parse_filter(text: str) -> RunFilter:
    """LIST_RUNS's filter; an empty text is `{}`."""
    found: dict[str, Any] = {}
    for where, key, raw in items(decode(text or "{}", "filter"), ""):
        if key == "params" and isinstance(raw, Pairs):
            found[key] = _checked_params(raw, patch=False)
            continue
        value = found[key] = plain(raw, where)
        check = _FILTER_FIELDS.get(key)
        if check is None:
            raise fail(key, "unknown key")
        why = check(value)
        if why:
            raise fail(key, why)
    return RunFilter(**found)
