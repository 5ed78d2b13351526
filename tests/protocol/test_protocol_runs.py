"""Run documents and run filters: strict JSON, the patch rules, merge semantics, the
server's times, run.json loading and LIST_RUNS's filter matching."""

import json
from typing import Any

import pytest

from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.runs import (
    KEYS,
    MAX_DOCUMENT_BYTES,
    RunFilter,
    apply_patch,
    dumps,
    load_document,
    parse_filter,
    parse_patch,
    same_value,
)
from fetchml.protocol.strictjson import parse_object

ID = "0123456789abcdef0123456789abcdef01234567"


def refused(call: Any, *args: Any) -> str:
    with pytest.raises(MalformedRequest) as info:
        call(*args)
    return info.value.message


# -- strict JSON -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": NaN}', "a: NaN is not JSON"),
        ('{"a": {"b": -Infinity}}', "a.b: -Infinity is not JSON"),
        ('{"a": 1e400}', "a: number overflows binary64"),
        ('{"a": [1, 9007199254740993]}', "a: integer beyond ±2^53"),
        ('{"a": 1, "b": {"c": 1, "c": 2}}', "b.c: duplicate key"),
        ('{"a": "\\ud800"}', "a: lone surrogate or U+0000 in a string"),
        ('{"a": "x\\u0000"}', "a: lone surrogate or U+0000 in a string"),
        ('{"\\u0000": 1}', "\x00: lone surrogate or U+0000 in a string"),
        ("[1]", "patch: expected a JSON object"),
        ("", "patch: invalid JSON (Expecting value: line 1 column 1 (char 0))"),
    ],
)
def test_strict_json_names_the_first_offending_key(text: str, message: str) -> None:
    assert refused(parse_object, text, "patch") == message


def test_strict_json_keeps_what_rfc_8259_allows() -> None:
    text = '{"a": [9007199254740992, -9007199254740992, 1e300, "\\ud83d\\ude00"], "b": {}}'
    assert parse_object(text, "x") == {
        "a": [2**53, -(2**53), 1e300, "\U0001f600"],
        "b": {},
    }


def test_the_first_offence_in_document_order_wins() -> None:
    assert refused(parse_object, '{"a": {"x": NaN}, "a": 1}', "p") == "a.x: NaN is not JSON"


# -- UPDATE_RUN's patch ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"heartbeat": False}, "heartbeat: must be true"),
        ({"created_at": 1}, "created_at: written by the server"),
        ({"heartbeat_at": None}, "heartbeat_at: written by the server"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"name": ""}, "name: must be a string of 1..255 bytes"),
        ({"name": "é" * 128}, "name: must be a string of 1..255 bytes"),
        ({"project": "p" * 129}, "project: must be a string of 0..128 bytes"),
        ({"git_commit": ID.upper()}, "git_commit: must be 40 lowercase hex characters"),
        ({"notes": 3}, "notes: must be a string of 0..4096 bytes"),
        ({"host": "h" * 256}, "host: must be a string of 0..255 bytes"),
        ({"pid": 2**31}, "pid: must be an integer 0..2147483647"),
        ({"pid": True}, "pid: must be an integer 0..2147483647"),
        ({"status": "done"}, "status: must be one of running, finished, failed, crashed"),
        ({"output": "o" * 16385}, "output: must be a string of 0..16384 bytes"),
        ({"tags": "best"}, "tags: must be an array of at most 100 strings"),
        ({"tags": [str(i) for i in range(101)]}, "tags: must be an array of at most 100 strings"),
        ({"tags": ["a", ""]}, "tags: each tag must be a string of 1..64 bytes, got ''"),
        ({"tags": ["a", 1]}, "tags: each tag must be a string of 1..64 bytes, got 1"),
        ({"tags": ["a", "a"]}, "tags: tags must be distinct"),
        ({"params": [1]}, "params: must be an object"),
        ({"params": {"": 1}}, "params.: a param's key must be 1..255 bytes"),
        ({"params": {"opt": {"lr": 1}}}, "params.opt: must be a string, a number or a boolean"),
        ({"params": {"l": [1]}}, "params.l: must be a string, a number or a boolean"),
        ({"params": {"s": "x" * 4097}}, "params.s: must be a string of at most 4096 bytes"),
    ],
)
def test_a_patch_is_checked_on_its_own(patch: dict[str, Any], message: str) -> None:
    assert refused(parse_patch, json.dumps(patch)) == message


def test_a_patch_may_reset_delete_and_beat() -> None:
    text = '{"heartbeat": true, "notes": null, "params": {"lr": null, "bs": 32}, "tags": []}'
    assert parse_patch(text) == {
        "heartbeat": True,
        "notes": None,
        "params": {"lr": None, "bs": 32},
        "tags": [],
    }


def patched(stored: dict[str, Any] | None, patch: dict[str, Any], now: int) -> dict[str, Any]:
    return apply_patch(stored, parse_patch(json.dumps(patch)), default_name="job", now=now)


def test_a_new_document_has_every_key_and_its_defaults() -> None:
    doc = patched(None, {}, 100)
    assert list(doc) == list(KEYS)
    assert doc == {
        "name": "job",
        "project": "",
        "git_commit": None,
        "params": {},
        "tags": [],
        "notes": "",
        "host": None,
        "pid": None,
        "status": None,
        "output": "",
        "created_at": 100,
        "started_at": None,
        "ended_at": None,
        "heartbeat_at": 100,
    }


def test_merge_semantics() -> None:
    doc = patched(None, {"name": "a", "params": {"lr": 0.1, "bs": 32}, "tags": ["x", "y"]}, 1)
    doc = patched(doc, {"params": {"lr": None, "wd": 0.5}, "tags": ["z"], "notes": "n"}, 2)
    assert (doc["params"], doc["tags"], doc["notes"]) == ({"bs": 32, "wd": 0.5}, ["z"], "n")
    doc = patched(doc, {"name": None, "params": None, "notes": None, "heartbeat": True}, 3)
    assert (doc["name"], doc["params"], doc["notes"]) == ("job", {}, "")
    assert (doc["created_at"], doc["heartbeat_at"]) == (1, 3)


def test_server_times_follow_the_status() -> None:
    doc = patched(None, {"status": "running"}, 10)
    assert (doc["started_at"], doc["ended_at"]) == (10, None)
    doc = patched(doc, {"status": "finished"}, 20)
    assert (doc["started_at"], doc["ended_at"]) == (10, 20)
    doc = patched(doc, {"status": "finished"}, 25)  # repeating the stored status: untouched
    assert doc["ended_at"] == 20
    doc = patched(doc, {"status": "failed"}, 30)  # another terminal value
    assert doc["ended_at"] == 30
    doc = patched(doc, {"status": "running"}, 40)  # started_at is never reset
    assert (doc["started_at"], doc["ended_at"]) == (10, None)
    doc = patched(doc, {"status": None}, 50)
    assert (doc["status"], doc["ended_at"]) == (None, None)


def test_limits_of_the_merged_document() -> None:
    full = patched(None, {"params": {f"p{i}": i for i in range(1000)}}, 1)
    assert refused(patched, full, {"params": {"one_more": 1}}, 2) == (
        "params: more than 1000 keys (1001)"
    )
    big = {f"k{i}": "v" * 4000 for i in range(17)}
    message = refused(patched, None, {"params": big}, 1)
    assert message.startswith("run: document too large (") and message.endswith(" > 65536)")
    size = int(message.split("(")[1].split(" ")[0])
    assert size == len(dumps(apply_patch(None, {}, default_name="job", now=1)).encode()) + len(
        json.dumps(big, separators=(",", ":"))
    ) - len("{}")


# -- run.json ----------------------------------------------------------------------------


def test_load_document_round_trip_and_defaults() -> None:
    doc = patched(None, {"name": "é", "status": "running", "pid": 7}, 5)
    assert load_document(dumps(doc).encode()) == doc
    assert load_document(b'{"name": "n", "extra": 1}') == {
        **{key: None for key in KEYS},
        "name": "n",
        "project": "",
        "params": {},
        "tags": [],
        "notes": "",
        "output": "",
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff{}",
        b"[]",
        b"{",
        b'{"name": "n", "pid": -1}',
        b'{"name": "n", "created_at": "x"}',
        b'{"name": null}',
        b'{"name": "n", "tags": null}',
        b'{"name": "n", "params": {"a": null}}',
        b'{"name": "' + b"x" * MAX_DOCUMENT_BYTES + b'"}',
    ],
)
def test_an_unreadable_document_is_none(raw: bytes) -> None:
    assert load_document(raw) is None


# -- LIST_RUNS's filter ------------------------------------------------------------------


def test_filter_defaults_and_empty_text() -> None:
    assert parse_filter("") == parse_filter("{}") == RunFilter()
    assert parse_filter('{"params": {}}').needs_document is False
    wanted = parse_filter(
        '{"user":"u","name":"n","project":"p","status":"crashed","tag":"t","git_commit":"ab",'
        '"params":{"lr":0.1},"id":"01","order":"oldest","limit":1000,"offset":5}'
    )
    assert wanted == RunFilter(
        "u", "n", "p", "crashed", "t", "ab", {"lr": 0.1}, "01", "oldest", 1000, 5
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"owner": "u"}', "owner: unknown key"),
        ('{"user": null}', "user: must be a string"),
        ('{"status": "done"}', "status: must be one of running, finished, failed, crashed"),
        ('{"tag": ""}', "tag: must be a string of 1..64 bytes"),
        ('{"git_commit": "AB"}', "git_commit: must be 1..40 lowercase hex characters"),
        ('{"id": ""}', "id: must be 1..40 lowercase hex characters"),
        ('{"order": "random"}', "order: must be newest or oldest"),
        ('{"limit": 0}', "limit: must be an integer 1..1000"),
        ('{"limit": 1.0}', "limit: must be an integer 1..1000"),
        ('{"offset": -1}', "offset: must be an integer >= 0"),
        ('{"params": 1}', "params: must be an object"),
        ('{"params": {"lr": null}}', "params.lr: must be a string, a number or a boolean"),
        ('{"params": {"lr": [1]}}', "params.lr: must be a string, a number or a boolean"),
        ('{"limit": NaN}', "limit: NaN is not JSON"),
        ("[]", "filter: expected a JSON object"),
    ],
)
def test_a_bad_filter_names_its_key(text: str, message: str) -> None:
    assert refused(parse_filter, text) == message


def test_filter_matching() -> None:
    doc = patched(
        None,
        {
            "name": "lr-sweep-1",
            "project": "vision",
            "status": "running",
            "tags": ["best"],
            "git_commit": ID,
            "params": {"lr": 1, "opt": "adam", "amp": True},
        },
        1,
    )

    def match(text: str, doc: dict[str, Any] | None = doc, job: str | None = "job") -> bool:
        return parse_filter(text).matches(ID, "alice", job, doc)

    assert match("{}") and match('{"user": "alice"}') and not match('{"user": "bob"}')
    assert match('{"id": "0123"}') and not match('{"id": "1"}')
    assert match('{"name": "sweep"}') and not match('{"name": "Sweep"}')
    assert match('{"project": "vision", "status": "running", "tag": "best"}')
    assert not match('{"project": "nlp"}') and not match('{"status": "finished"}')
    assert not match('{"tag": "worst"}')
    assert match('{"git_commit": "0123456"}') and not match('{"git_commit": "1"}')
    assert match('{"params": {"lr": 1.0, "opt": "adam", "amp": true}}')
    assert not match('{"params": {"lr": true}}') and not match('{"params": {"lr": "1"}}')
    assert not match('{"params": {"momentum": 0.9}}')
    # Without a readable document: user, name (of the job) and id still apply; the rest never.
    assert match('{"name": "jo", "id": "01"}', None) and not match('{"name": "x"}', None)
    assert not match('{"name": "jo"}', None, None)
    assert not match('{"project": ""}', None) and not match('{"params": {"a": 1}}', None)
    assert match('{"params": {}}', None)
    no_commit = patched(None, {}, 1)
    assert not match('{"git_commit": "0"}', no_commit)


def test_same_value_follows_json_types() -> None:
    assert same_value(1, 1.0) and same_value("a", "a") and same_value(False, False)
    assert not same_value(1, True) and not same_value(True, 1) and not same_value("1", 1)
    assert not same_value(1, "1") and not same_value(0.1, 0.2)


@pytest.mark.parametrize(
    ("call", "text", "message"),
    [
        (
            parse_patch,
            '{"name": "", "params": {"x": NaN}}',
            "name: must be a string of 1..255 bytes",
        ),
        (
            parse_patch,
            '{"params": {"a": [1], "b": NaN}}',
            "params.a: must be a string, a number or a boolean",
        ),
        (parse_patch, '{"params": {"a": NaN, "b": [1]}}', "params.a: NaN is not JSON"),
        (parse_patch, '{"params": {"a": 1, "a": 2}}', "params.a: duplicate key"),
        (parse_patch, '{"tags": [], "tags": []}', "tags: duplicate key"),
        (parse_filter, '{"limit": 0, "params": {"x": NaN}}', "limit: must be an integer 1..1000"),
        (
            parse_filter,
            '{"params": {"x": null, "y": NaN}}',
            "params.x: must be a string, a number or a boolean",
        ),
    ],
)
def test_checks_run_in_document_order(call: Any, text: str, message: str) -> None:
    assert refused(call, text) == message
