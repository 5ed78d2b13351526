"""One function per opcode: the rules, after decode and authentication.

Permission first, then existence, scope and state (PROTOCOL.md section 3).
No file I/O here: the store and the queue do that.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio

from fetchml.protocol import runs, shapes
from fetchml.protocol.enums import PruneType
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.jobspec import parse_spec
from fetchml.protocol.metrics import stamp_records
from fetchml.protocol.records import Metadata
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    ListRuns,
    Prune,
    PrunePreview,
    QueryMetrics,
    QueueJob,
    QueueJobSpec,
    Status,
    UpdateJob,
    UpdateRun,
    WatchMetrics,
)
from fetchml.protocol.responses import Data, Response, StatusReport, Success

from . import newest
from .auth import Identity, RateLimiter
from .config import Config
from .errors import InvalidRequest, NotFound, ServerError, StorageFault
from .heavy import HeavyLimiter
from .jobs import MIN_JOB_JSON_BYTES, JobQueue
from .listing import page_cut, select_runs
from .query import is_heavy, query_page
from .runs import RunStore
from .series import SeriesCache
from .storage import ExperimentInfo, ExperimentStore
from .watch import Subscriber, WatchHub

if TYPE_CHECKING:
    from .fanout import Fanout

logger = logging.getLogger(__name__)

Audit = Callable[..., None]


@dataclass
class Context:
    """What handlers work with; built once by the app."""

    config: Config
    store: ExperimentStore
    jobs: JobQueue
    hub: WatchHub
    limiter: RateLimiter
    audit: Audit = field(default=lambda *a, **k: None)
    fanout: "Fanout | None" = None
    """Cluster mode: the fan-out to the other nodes."""
    series: SeriesCache = field(init=False)
    heavy: HeavyLimiter = field(init=False)
    runs: RunStore = field(init=False)
    listed: "dict[str, Item]" = field(init=False, default_factory=dict)
    """The items the last LIST_EXPERIMENTS sent (at most one message of JSON)."""

    def __post_init__(self) -> None:
        self.series = SeriesCache(self.store)
        self.heavy = HeavyLimiter(self.config.server.heavy_queries_per_user)
        self.runs = RunStore(self.store.base, self.store.budget, self.config.runs.crash_after_s)
        if self.config.cluster.enabled:  # other nodes write run.json: listings check each
            self.runs.recheck_s = 0
        self.store.hooks.append(self.runs.on_commit)
        self.store.forget_hooks += [self.series.drop, self.runs.forget]


def _now() -> int:
    return int(time.time())


def _data(data_type: str, obj: Any) -> Data:
    return Data(timestamp=_now(), data_type=data_type, payload=shapes.dumps(obj).encode())


def _owner(ctx: Context, who: Identity, commit: str, write: bool = False) -> Metadata | None:
    """The metadata of an experiment the caller may read (or write); NotFound /
    PermissionDenied."""
    if not ctx.store.exists(commit):
        raise NotFound(f"experiment {commit} not found")
    meta = ctx.store.metadata(commit)
    owner = meta.user if meta else None
    who.require_write(owner) if write else who.require_read(owner)
    return meta


# -- metrics: the hot path -----------------------------------------------------


def accept_log(
    ctx: Context, who: Identity, commit: str, tails: list[bytes]
) -> "asyncio.Future[int]":
    """Accept step of LOG_METRIC(S): check, stamp, queue for group commit. Synchronous.

    `tails` are the metrics as records hold them after the timestamp (see
    protocol.metrics.record_tails), so a record is the stamp plus a tail.
    """
    who.require("jobs:update")
    _owner(ctx, who, commit, write=True)
    return ctx.store.submit(commit, stamp_records(_now(), tails), len(tails))


CLOCK_SLACK_S = 300
"""LOG_METRICS_AT refuses timestamps further ahead of the daemon's clock than this."""


def accept_log_at(
    ctx: Context, who: Identity, commit: str, records: bytes, count: int, latest: int
) -> "asyncio.Future[int]":
    """Accept step of LOG_METRICS_AT: the client's records (whole and checked, `latest` the
    newest timestamp among them), queued byte for byte. Synchronous."""
    who.require("jobs:update")
    if latest > _now() + CLOCK_SLACK_S:
        raise InvalidRequest(
            f"timestamp {latest} is more than {CLOCK_SLACK_S} s ahead of the server clock"
        )
    _owner(ctx, who, commit, write=True)
    return ctx.store.submit(commit, records, count)


# -- experiments --------------------------------------------------------------


async def create_experiment(ctx: Context, who: Identity, req: CreateExperiment) -> Response:
    who.require("jobs:create")
    commit = req.commit_id.hex()
    await ctx.store.create(
        Metadata(commit_id=commit, timestamp=_now(), job_name=req.job_name, user=who.user)
    )
    ctx.audit("create_experiment", who, commit=commit, job_name=req.job_name)
    return Success(timestamp=_now(), message=f"experiment {commit} created")


async def get_experiment(ctx: Context, who: Identity, req: GetExperiment) -> Response:
    who.require("jobs:read")
    commit = req.commit_id.hex()
    meta = _owner(ctx, who, commit)
    if meta is None:
        raise StorageFault(ctx.store.damaged(commit) or "metadata unreadable")
    total = await ctx.store.count(commit)
    run = await ctx.runs.document(commit)
    budget = ctx.config.server.max_message_bytes - 256
    # Each record's JSON takes at least ~50 bytes: read no more than could fit.
    start = max(0, total - budget // 50)
    data = b""
    index = start
    while index < total:
        chunk = await ctx.store.read(commit, index, 4 << 20)
        data += chunk.data
        index += chunk.records

    shape = shapes.experiment(
        commit_id=commit,
        **shapes.meta_fields(meta),
        metrics=(),
        metrics_count=total,
        metrics_truncated=False,
        run=run,
    )

    def document() -> bytes:  # JSON of up to max_message_bytes: off the event loop
        return newest.document(data, shape, total, start, budget)

    async with ctx.heavy.slot(who.user):
        payload = await anyio.to_thread.run_sync(document)
    return Data(timestamp=_now(), data_type="experiment", payload=payload)


async def list_experiments(ctx: Context, who: Identity, req: ListExperiments) -> Response:
    """The longest prefix of the listing's order that fits in max_message_bytes. Only
    that prefix is counted and given its run document; an item's JSON is reused while
    its metadata, count and document are the same objects as when it was made."""
    who.require("jobs:read")
    room = ctx.config.server.max_message_bytes - 256 - 2
    parts: list[bytes] = []
    made: dict[str, Item] = {}

    def sees(info: ExperimentInfo) -> bool:
        return who.sees(info.meta.user if info.meta else None)

    async with aclosing(ctx.store.listed(sees)) as listed:
        async for infos in listed:
            batch = [info for info in infos if sees(info)]  # some were found unreadable
            ctx.runs.know({info.commit: info.meta for info in batch if info.meta is not None})
            rows = {row.commit: row for row in await ctx.runs.rows([i.commit for i in batch])}
            for info in batch:
                row = rows.get(info.commit)
                if row is not None and not row.loaded.full:
                    (row,) = await ctx.runs.current([row])
                item = _item(ctx.listed.get(info.commit), info, row.doc if row else None)
                room -= len(item.text) + (1 if parts else 0)
                if room < 0:
                    break
                parts.append(item.text)
                made[info.commit] = item
            if room < 0:
                break
    ctx.listed = made
    return Data(timestamp=_now(), data_type="experiments", payload=b"[" + b",".join(parts) + b"]")


@dataclass(frozen=True, slots=True)
class Item:
    """One LIST_EXPERIMENTS item's JSON and what it was made of."""

    info: ExperimentInfo
    doc: dict[str, Any] | None
    text: bytes


def _item(old: Item | None, info: ExperimentInfo, doc: dict[str, Any] | None) -> Item:
    if (
        old is not None
        and old.doc is doc
        and old.info.meta is info.meta
        and old.info.metrics_count == info.metrics_count
        and old.info.damaged == info.damaged
    ):
        return old
    item = shapes.experiments_item(
        commit_id=info.commit,
        **shapes.meta_fields(info.meta),
        metrics_count=info.metrics_count,
        damaged=info.damaged,
        run=doc,
    )
    return Item(info, doc, shapes.dumps_utf8(item).encode())


async def query_metrics(ctx: Context, who: Identity, req: QueryMetrics) -> Response:
    who.require("jobs:read")
    _owner(ctx, who, req.commit_hex)
    limit = ctx.config.server.max_message_bytes
    if is_heavy(req):
        async with ctx.heavy.slot(who.user):
            payload = await query_page(ctx.store, ctx.series, req, limit)
    else:
        payload = await query_page(ctx.store, ctx.series, req, limit)
    return Data(timestamp=_now(), data_type="metrics", payload=payload)


def watch_metrics(ctx: Context, who: Identity, req: WatchMetrics) -> Subscriber:
    who.require("jobs:read")
    commit = req.commit_hex
    _owner(ctx, who, commit)
    return Subscriber(commit, req.from_index, req.name, ctx.config.server.watch_buffer_bytes)


def _prune_target(
    who: Identity, req: Prune | PrunePreview
) -> tuple[Literal["keep", "older"], str | None]:
    """PRUNE's and PRUNE_PREVIEW's selection: its kind, and the owner it is limited to."""
    who.require("jobs:delete")
    kind: Literal["keep", "older"] = "keep" if req.prune_type == PruneType.KEEP_NEWEST else "older"
    return kind, who.write_owner


async def prune(ctx: Context, who: Identity, req: Prune) -> Response:
    kind, owner = _prune_target(who, req)
    if ctx.fanout is not None:
        await ctx.fanout.require()  # the other nodes must hear of it
    pruned = await ctx.store.prune(kind, req.value, owner=owner)
    for commit in pruned:
        ctx.hub.end(commit)
    if ctx.fanout is not None:
        ctx.fanout.pruned(pruned)
    ctx.audit("prune", who, prune_type=kind, value=req.value, pruned=pruned)
    return _data("pruned", shapes.pruned(pruned))


def prune_preview(ctx: Context, who: Identity, req: PrunePreview) -> Response:
    """PRUNE's selection, removing nothing (so not audited)."""
    kind, owner = _prune_target(who, req)
    return _data("pruned", shapes.pruned(ctx.store.prune_selection(kind, req.value, owner=owner)))


# -- jobs -----------------------------------------------------------------------


async def queue_job(ctx: Context, who: Identity, req: QueueJob | QueueJobSpec) -> Response:
    """QUEUE_JOB, and QUEUE_JOB_SPEC with its spec checked before anything is made."""
    who.require("jobs:create")
    if not req.job_name:
        raise InvalidRequest("job name must not be empty")
    args, spec = "", None
    if isinstance(req, QueueJobSpec):
        with _json_rules():
            args, spec = req.spec, parse_spec(req.spec)
    commit = req.commit_id.hex()
    if ctx.store.exists(commit):
        meta = ctx.store.metadata(commit)
        who.require_write(meta.user if meta else None)
    else:
        meta = Metadata(commit_id=commit, timestamp=_now(), job_name=req.job_name, user=who.user)
        try:
            await ctx.store.create(meta)
        except Exception as exc:
            if not ctx.store.exists(commit):
                raise
            logger.debug("experiment %s appeared meanwhile: %s", commit, exc)
            existing = ctx.store.metadata(commit)
            who.require_write(existing.user if existing else None)
    job = await ctx.jobs.enqueue(
        job_name=req.job_name,
        commit_id=commit,
        user=who.user,
        priority=req.priority,
        args=args,
        spec=spec,
    )
    ctx.audit("queue_job", who, commit=commit, job_name=req.job_name, job_id=job.id)
    return _data("job", job.to_json())


async def status(ctx: Context, who: Identity, req: Status) -> Response:
    """The newest jobs the caller may read that fit in max_message_bytes, and their `total`."""
    who.require("jobs:read")
    owner = who.read_owner
    budget = ctx.config.server.max_message_bytes - 256
    jobs = await ctx.jobs.list_jobs(owner, limit=max(0, budget // MIN_JOB_JSON_BYTES))
    doc = shapes.status(
        user=who.user,
        role=who.role,
        jobs=[],
        queue_length=await ctx.jobs.queue_length(),
        total=await ctx.jobs.count_jobs(owner),
    )
    room = budget - len(shapes.dumps(doc).encode())
    for job in jobs:
        item = job.to_json()
        room -= len(shapes.dumps(item).encode()) + 1  # and a comma
        if room < 0:
            break
        doc["jobs"].append(item)
    return StatusReport(timestamp=_now(), status_json=shapes.dumps(doc))


async def cancel_job(ctx: Context, who: Identity, req: CancelJob) -> Response:
    who.require("jobs:update")
    n = await ctx.jobs.cancel(req.job_name, who.write_owner)
    ctx.audit("cancel_job", who, job_name=req.job_name, cancelled=n)
    return Success(timestamp=_now(), message=f"cancelled {n} job(s)")


async def claim_job(ctx: Context, who: Identity, req: ClaimJob) -> Response:
    who.require("jobs:claim")
    job = await ctx.jobs.claim(req.worker_id, who.write_owner, claimer=who.user)
    if job is not None:
        ctx.audit("claim_job", who, job_id=job.id, worker_id=req.worker_id)
    return _data("job", job.to_json() if job else None)


async def update_job(ctx: Context, who: Identity, req: UpdateJob) -> Response:
    who.require("jobs:claim")
    job = await ctx.jobs.update(
        req.job_id,
        req.status,
        req.error,
        who.write_owner,
        caller=None if "*" in who.permissions else who.user,
        worker_id=req.worker_id,
    )
    ctx.audit("update_job", who, job_id=job.id, status=job.status.name.lower())
    return Success(timestamp=_now(), message=f"job {job.id} {job.status.name.lower()}")


def whoami(ctx: Context, who: Identity) -> Response:
    config = ctx.config
    limits = shapes.whoami_limits(
        lease_s=config.jobs.lease_s,
        crash_after_s=config.runs.crash_after_s,
        max_message_bytes=config.server.max_message_bytes,
    )
    return _data(
        "whoami",
        shapes.whoami(
            user=who.user,
            role=who.role,
            permissions=who.permissions,
            scope=who.scope,
            read_scope=who.read_scope,
            write_scope=who.write_scope,
            limits=limits,
        ),
    )


# -- runs -------------------------------------------------------------------------


@contextmanager
def _json_rules() -> Iterator[None]:
    """The rules of a JSON text (protocol/runs.py) broken: INVALID_REQUEST, its message."""
    try:
        yield
    except MalformedRequest as exc:
        raise InvalidRequest(exc.message) from None


async def update_run(ctx: Context, who: Identity, req: UpdateRun) -> Response:
    """A merge patch of run.json; class heartbeat (never rate limited, never audited)."""
    who.require("jobs:update")
    with _json_rules():
        patch = runs.parse_patch(req.patch)
    commit = req.commit_id.hex()
    meta = _owner(ctx, who, commit, write=True)
    name = meta.job_name if meta and 1 <= len(meta.job_name.encode()) <= 255 else commit
    with _json_rules():
        doc = await ctx.runs.update(commit, patch, default_name=name)
    return Data(timestamp=_now(), data_type="run", payload=shapes.dumps_utf8(doc).encode())


async def list_runs(ctx: Context, who: Identity, req: ListRuns) -> Response:
    """A page of the experiments that match the filter, in the caller's read scope."""
    who.require("jobs:read")
    with _json_rules():
        query = runs.parse_filter(req.filter)
    matches = select_runs(await ctx.runs.rows(), query, who.sees)
    page = await ctx.runs.current(matches[query.offset : query.offset + query.limit])
    counts = {}
    for row in page:
        try:
            counts[row.commit] = await ctx.store.count(row.commit)
        except ServerError as exc:  # removed meanwhile, or its metrics file is unusable
            logger.debug("LIST_RUNS: no count for %s: %s", row.commit, exc.message)
            counts[row.commit] = 0
    summaries = (
        shapes.run_summary(
            id=row.commit,
            metrics_count=counts[row.commit],
            **shapes.meta_fields(row.meta),
            run=row.doc,
        )
        for row in page
    )
    total = len(matches)
    envelope = len(shapes.dumps(shapes.runs(runs=[], total=total, next_offset=total)))
    budget = ctx.config.server.max_message_bytes - 256 - envelope
    rows = page_cut(summaries, budget, at_least=1)
    after = query.offset + len(rows)
    doc = shapes.runs(runs=rows, total=total, next_offset=after if after < total else None)
    return Data(timestamp=_now(), data_type="runs", payload=shapes.dumps_utf8(doc).encode())
