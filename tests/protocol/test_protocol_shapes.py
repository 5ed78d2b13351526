"""protocol/shapes.py: one builder and one reader per JSON shape, and the daemon and the
client agreeing on every shape byte for byte (key order included)."""

import json
import math
from typing import Any

import pytest

from fetchml.client import models
from fetchml.client.errors import ProtocolViolation
from fetchml.client.output import metric_json
from fetchml.client.runs import RunsPage
from fetchml.protocol import shapes
from fetchml.protocol.enums import JobStatus, PruneType
from fetchml.protocol.errors import MalformedResponse
from fetchml.protocol.metrics import MetricRecord
from fetchml.protocol.records import Metadata
from fetchml.protocol.requests import (
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    LogMetrics,
    MetricPoint,
    PrunePreview,
    QueueJob,
    Status,
    WhoAmI,
)
from fetchml.protocol.responses import Data, StatusReport
from fetchml.server.jobs import Job as ServerJob
from tests.support.keys import hash_of

COMMIT = "0123456789abcdef0123456789abcdef01234567"
JOB: dict[str, Any] = {
    "id": "6f1c0e2a-8d53-4a8e-9b0e-3c1f5a7d2b10",
    "job_name": "train",
    "args": '{"command":["python","train.py"]}',
    "status": JobStatus.RUNNING,
    "priority": 5,
    "created_at": 1764000000,
    "started_at": 1764000060,
    "ended_at": None,
    "worker_id": "gpu-01",
    "claimed_by": "wendy",
    "error": None,
    "datasets": (),
    "commit_id": COMMIT,
    "user": "alice",
    "spec": {
        "command": ["python", "train.py"],
        "env": {},
        "workdir": None,
        "max_attempts": 1,
        "timeout_s": 0,
    },
    "attempts": 0,
    "heartbeat_at": 1764000090,
}
# The protocol document's `job` example, compact.
JOB_TEXT = (
    '{"id":"6f1c0e2a-8d53-4a8e-9b0e-3c1f5a7d2b10","job_name":"train",'
    '"args":"{\\"command\\":[\\"python\\",\\"train.py\\"]}","status":"running",'
    '"priority":5,"created_at":1764000000,"started_at":1764000060,"ended_at":null,'
    '"worker_id":"gpu-01","claimed_by":"wendy","error":null,"datasets":[],'
    '"metadata":{"commit_id":"0123456789abcdef0123456789abcdef01234567","user":"alice"},'
    '"spec":{"command":["python","train.py"],"env":{},"workdir":null,"max_attempts":1,'
    '"timeout_s":0},"attempts":0,"heartbeat_at":1764000090}'
)


def test_job_golden_text_both_ways() -> None:
    assert shapes.dumps(shapes.job(**JOB)) == JOB_TEXT
    assert shapes.read_job(json.loads(JOB_TEXT)) == JOB


def test_server_and_client_jobs_write_the_same_text() -> None:
    assert shapes.dumps(ServerJob(**JOB).to_json()) == JOB_TEXT
    assert shapes.dumps(models.Job.from_json(json.loads(JOB_TEXT)).to_json()) == JOB_TEXT


def test_metric_golden_text_both_ways() -> None:
    record = MetricRecord(1795735110, 8, math.inf, "loss")
    text = '{"name":"loss","value":"Infinity","step":8,"timestamp":1795735110}'
    assert shapes.dumps(shapes.metric(record)) == text == metric_json(record)
    assert shapes.read_metric(json.loads(text)) == record


def test_experiment_golden_text_both_ways() -> None:
    meta = Metadata(commit_id=COMMIT, timestamp=1764000000, job_name="train", user="alice")
    values = {
        "commit_id": COMMIT,
        **shapes.meta_fields(meta),
        "metrics": (MetricRecord(1795735109, 7, 0.25, "loss"),),
        "metrics_count": 1,
        "metrics_truncated": False,
        "run": None,
    }
    text = (
        '{"metadata":{"commit_id":"' + COMMIT + '","timestamp":1764000000,"job_name":"train",'
        '"user":"alice"},"metrics":[{"name":"loss","value":0.25,"step":7,"timestamp":1795735109}],'
        '"metrics_count":1,"metrics_truncated":false,"run":null}'
    )
    assert shapes.dumps(shapes.experiment(**values)) == text
    assert shapes.read_experiment(json.loads(text)) == values


def test_small_shapes_round_trip() -> None:
    item = {
        "commit_id": "f" * 40,
        **shapes.meta_fields(None),
        "metrics_count": 0,
        "damaged": "metadata unreadable",
        "run": None,
    }
    assert shapes.read_experiments_item(shapes.experiments_item(**item)) == item
    who: dict[str, Any] = {
        "user": "alice",
        "role": "r",
        "permissions": ("jobs:read", "a"),
        "scope": "own",
        "read_scope": "all",
        "write_scope": "own",
        "limits": {"lease_s": 0.5, "crash_after_s": 300, "max_message_bytes": 131072},
    }
    assert shapes.whoami(**who)["permissions"] == ["a", "jobs:read"]
    assert shapes.read_whoami(shapes.whoami(**who)) == who | {"permissions": ("a", "jobs:read")}
    assert shapes.read_pruned(shapes.pruned([COMMIT])) == [COMMIT]
    status: dict[str, Any] = {
        "user": "u",
        "role": "r",
        "jobs": [JOB],
        "queue_length": 1,
        "total": 3,
    }
    doc = shapes.status(**status | {"jobs": [shapes.job(**JOB)]})
    assert list(doc) == ["user", "role", "jobs", "queue_length", "total"]
    assert shapes.read_status(doc) == status
    del doc["total"]  # an older daemon: total is the jobs listed
    assert shapes.read_status(doc)["total"] == 1


@pytest.mark.parametrize(
    ("reader", "obj", "error"),
    [
        (shapes.read_job, {"id": "x"}, "unexpected job JSON: KeyError('metadata')"),
        (shapes.read_job, JOB_TEXT, "unexpected job JSON: TypeError"),
        (shapes.read_metric, {"name": "x", "value": 1, "step": "7", "timestamp": 1}, "metric"),
        (shapes.read_experiment, [], "unexpected experiment JSON"),
        (shapes.read_experiments_item, {"commit_id": "c"}, "experiments item JSON"),
        (shapes.read_status, {"user": "u"}, "unexpected status JSON"),
        (shapes.read_whoami, None, "unexpected whoami JSON"),
        (shapes.read_pruned, {"pruned": 3}, "unexpected pruned JSON"),
        (shapes.read_job, json.loads(JOB_TEXT) | {"status": "lost"}, "KeyError('LOST')"),
    ],
)
def test_readers_refuse_what_is_not_the_shape(reader: Any, obj: Any, error: str) -> None:
    with pytest.raises(MalformedResponse, match=error.replace("(", r"\(").replace(")", r"\)")):
        reader(obj)


WHOAMI_TEXT = (
    '{"user":"bob","role":"member","permissions":["jobs:create","jobs:read","jobs:update"],'
    '"scope":"own","read_scope":"all","write_scope":"own",'
    '"limits":{"lease_s":120,"crash_after_s":300.5,"max_message_bytes":1048576}}'
)


def test_whoami_golden_text_both_ways() -> None:
    limits = shapes.whoami_limits(lease_s=120.0, crash_after_s=300.5, max_message_bytes=1 << 20)
    values: dict[str, Any] = {
        "user": "bob",
        "role": "member",
        "permissions": ("jobs:create", "jobs:read", "jobs:update"),
        "scope": "own",
        "read_scope": "all",
        "write_scope": "own",
        "limits": limits,
    }
    assert shapes.dumps(shapes.whoami(**values)) == WHOAMI_TEXT
    assert shapes.read_whoami(json.loads(WHOAMI_TEXT)) == values
    me = models.WhoAmI.from_json(json.loads(WHOAMI_TEXT))
    assert (me.scope, me.read_scope, me.write_scope) == ("own", "all", "own")
    assert me.limits == models.Limits(lease_s=120, crash_after_s=300.5, max_message_bytes=1 << 20)
    assert shapes.dumps(me.to_json()) == WHOAMI_TEXT


def test_whoami_of_a_daemon_before_split_scopes() -> None:
    """`scope` alone stands for both scopes, and there are no limits."""
    old = {"user": "ana", "role": "analyst", "permissions": ["jobs:read"], "scope": "all"}
    me = models.WhoAmI.from_json(old)
    assert (me.scope, me.read_scope, me.write_scope, me.limits) == ("all", "all", "all", None)
    assert models.WhoAmI(user="u", role="r", permissions=(), scope="own").read_scope == "own"


@pytest.mark.parametrize(
    "limits",
    [
        {"lease_s": "120", "crash_after_s": 300, "max_message_bytes": 1},
        {"lease_s": 120, "crash_after_s": True, "max_message_bytes": 1},
        {"lease_s": 120, "crash_after_s": 300, "max_message_bytes": 1.5},
        {"lease_s": 120, "crash_after_s": 300},
        [],
    ],
)
def test_whoami_limits_must_be_numbers(limits: Any) -> None:
    with pytest.raises(MalformedResponse, match="unexpected whoami JSON"):
        shapes.read_whoami(json.loads(WHOAMI_TEXT) | {"limits": limits})


def test_client_models_tell_a_bad_shape_as_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation, match="unexpected whoami JSON"):
        models.WhoAmI.from_json({"user": "alice"})


async def test_client_writes_back_what_a_real_daemon_sent_byte_for_byte(daemon: Any) -> None:
    """Each shape as the daemon sends it, parsed by the client's models and written by
    them again: the same text, so one key order (the CLI's --json output included)."""
    commit = bytes.fromhex(COMMIT)
    admin = hash_of("admin")
    c = await daemon.client()
    try:
        await c.call(CreateExperiment(key_hash=admin, commit_id=commit, job_name="train"))
        points = (MetricPoint(7, 0.25, "loss"), MetricPoint(8, math.nan, "loss"))
        await c.call(LogMetrics(key_hash=admin, commit_id=commit, metrics=points))
        await c.call(QueueJob(key_hash=admin, commit_id=commit, priority=5, job_name="train"))
        texts: dict[str, str] = {}
        for name, request in (
            ("experiment", GetExperiment(key_hash=admin, commit_id=commit)),
            ("experiments", ListExperiments(key_hash=admin)),
            ("whoami", WhoAmI(key_hash=admin)),
            ("pruned", PrunePreview(key_hash=admin, prune_type=PruneType.KEEP_NEWEST, value=1)),
            ("status", Status(key_hash=admin)),
            ("job", ClaimJob(key_hash=admin, worker_id="gpu-01")),
        ):
            response = await c.call(request)
            if isinstance(response, StatusReport):
                texts[name] = response.status_json
            else:
                assert isinstance(response, Data), response
                texts[name] = response.payload.decode()
    finally:
        await c.ws.close()
    back = {
        "experiment": models.Experiment.from_json(json.loads(texts["experiment"])).to_json(),
        "experiments": [
            models.ExperimentSummary.from_json(row).to_json()
            for row in json.loads(texts["experiments"])
        ],
        "whoami": models.WhoAmI.from_json(json.loads(texts["whoami"])).to_json(),
        "pruned": shapes.pruned(models.pruned_from_json(json.loads(texts["pruned"]))),
        "status": models.Status.from_json(json.loads(texts["status"])).to_json(),
        "job": models.Job.from_json(json.loads(texts["job"])).to_json(),
    }
    for name, text in texts.items():
        assert shapes.dumps(back[name]) == text, name
    metrics = json.loads(texts["experiment"])["metrics"]
    records = models.Experiment.from_json(json.loads(texts["experiment"])).metrics
    assert [metric_json(r) for r in records] == [shapes.dumps(m) for m in metrics]
    assert len(records) == 2 and math.isnan(records[1].value)


def test_run_shapes_round_trip_and_refuse_malformed_json() -> None:
    doc = {"name": "r", "status": "running"}
    page = shapes.runs(
        runs=[
            shapes.run_summary(
                id="ab" * 20, metrics_count=3, timestamp=5, job_name="j", user="u", run=doc
            )
        ],
        total=1,
        next_offset=None,
    )
    assert shapes.read_runs(page) == {
        "runs": [
            {
                "id": "ab" * 20,
                "metrics_count": 3,
                "timestamp": 5,
                "job_name": "j",
                "user": "u",
                "run": doc,
            }
        ],
        "total": 1,
        "next_offset": None,
    }
    assert shapes.read_run(doc) == doc
    with pytest.raises(MalformedResponse, match="unexpected run JSON"):
        shapes.read_run([doc])
    bad = json.loads(json.dumps(page))
    bad["runs"][0]["run"] = "document"
    with pytest.raises(MalformedResponse, match="unexpected runs JSON"):
        shapes.read_runs(bad)
    with pytest.raises(ProtocolViolation, match="unexpected runs JSON"):
        RunsPage.from_json(bad)  # the client reads runs through the same shapes


@pytest.mark.parametrize("spec", [[], "python train.py", 1])
def test_a_job_whose_spec_is_not_an_object_is_malformed(spec: object) -> None:
    with pytest.raises(MalformedResponse, match="spec: expected an object"):
        shapes.read_job(json.loads(JOB_TEXT) | {"spec": spec})


def test_a_job_from_a_daemon_before_specs_reads_with_the_defaults() -> None:
    old = {
        k: v
        for k, v in json.loads(JOB_TEXT).items()
        if k not in ("spec", "attempts", "heartbeat_at")
    }
    read = shapes.read_job(old)
    assert (read["spec"], read["attempts"], read["heartbeat_at"]) == (None, 0, None)
