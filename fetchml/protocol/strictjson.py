"""Strict JSON texts (UPDATE_RUN's patch, LIST_RUNS's filter, QUEUE_JOB_SPEC's spec).

A text must be an RFC 8259 object: NaN and Infinity literals, numbers that
overflow binary64, integers beyond ±2^53, duplicate keys, lone surrogates and
U+0000 are refused. Every complaint is a MalformedRequest whose message begins
with the dotted path of the first offending key in document order and a colon.
"""

import json
import re
from collections.abc import Iterator
from typing import Any

from .errors import MalformedRequest

_SAFE_INT = 2**53
_BAD_CHARS = re.compile(r"[\ud800-\udfff\x00]")


class _Bad:
    """A value the decoder met that JSON texts here may not hold; reported by the walk."""

    def __init__(self, why: str) -> None:
        self.why = why


class Pairs(list[tuple[str, Any]]):
    """An object as its (key, value) pairs, in document order, duplicates kept."""


_DECODER = json.JSONDecoder(
    object_pairs_hook=Pairs,
    parse_constant=lambda name: _Bad(f"{name} is not JSON"),
    parse_int=lambda text: (
        int(text) if abs(int(text)) <= _SAFE_INT else _Bad("integer beyond ±2^53")
    ),
    parse_float=lambda text: (
        _Bad("number overflows binary64") if abs(float(text)) == float("inf") else float(text)
    ),
)


def fail(path: str, why: str) -> MalformedRequest:
    return MalformedRequest(f"{path}: {why}")


def _string(text: str, path: str) -> str:
    if _BAD_CHARS.search(text):
        raise fail(path, "lone surrogate or U+0000 in a string")
    return text


def items(pairs: Pairs, path: str) -> Iterator[tuple[str, str, Any]]:
    """An object's (dotted path, key, raw value) in document order; duplicates refused."""
    seen: set[str] = set()
    for key, item in pairs:
        where = f"{path}.{key}" if path else key
        _string(key, where)
        if key in seen:
            raise fail(where, "duplicate key")
        seen.add(key)
        yield where, key, item


def plain(value: Any, path: str) -> Any:
    """`value` as plain dicts and lists, checked in document order."""
    if isinstance(value, _Bad):
        raise fail(path, value.why)
    if isinstance(value, str):
        return _string(value, path)
    if isinstance(value, Pairs):
        return {key: plain(item, where) for where, key, item in items(value, path)}
    if isinstance(value, list):
        return [plain(item, path) for item in value]
    return value


def decode(text: str, what: str) -> Pairs:
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise fail(what, f"invalid JSON ({exc})") from None
    if not isinstance(value, Pairs):
        raise fail(what, "expected a JSON object")
    return value


def parse_object(text: str, what: str) -> dict[str, Any]:
    """A strict JSON object; `what` names the text in messages about the whole of it."""
    result: dict[str, Any] = plain(decode(text, what), "")
    return result


def is_int(value: Any) -> bool:
    """A JSON integer: an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)
