"""One `match` over the Request union: what each opcode turns into, and its ordering class.

`dispatch` runs when a request is accepted, after decode and authentication, and
returns one outcome that says how the connection orders it (server/sequencer.py):

- Pipelined: metrics queued for group commit; acknowledged in order once written,
  while later requests are already being accepted.
- Answer: a response ready at once (a request refused when it is accepted).
- Barrier: work that runs once every earlier request is answered, with later requests
  accepted only after it. Its coroutine is made when it runs, never before.
- StartWatch: WATCH_METRICS; acknowledged once every earlier request is answered, then
  the connection only pushes.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import assert_never

from fetchml.protocol.enums import JobStatus, Opcode
from fetchml.protocol.metrics import max_timestamp
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    ListRuns,
    LogMetric,
    LogMetrics,
    LogMetricsAt,
    Prune,
    PrunePreview,
    QueryMetrics,
    QueueJob,
    QueueJobSpec,
    Request,
    Status,
    UpdateJob,
    UpdateRun,
    WatchMetrics,
    WhoAmI,
)
from fetchml.protocol.responses import Response

from . import handlers
from .auth import Identity
from .handlers import Context
from .query import is_heavy
from .watch import Subscriber


@dataclass(slots=True)
class Pipelined:
    """Made for every log: not frozen, as a frozen dataclass's __init__ costs about 1 us
    more (a tenth of what the daemon spends on a LOG_METRIC beyond a bare echo)."""

    future: "asyncio.Future[int]"
    opcode: Opcode
    records: int


@dataclass(frozen=True, slots=True)
class Answer:
    packet: bytes


@dataclass(frozen=True, slots=True)
class Barrier:
    req: Request
    who: Identity
    run: Callable[[], Awaitable[Response] | Response]


@dataclass(frozen=True, slots=True)
class StartWatch:
    key_hash: bytes
    subscriber: Subscriber


Outcome = Pipelined | Answer | Barrier | StartWatch


def accept_log(
    ctx: Context, who: Identity, opcode: Opcode, commit: str, tails: list[bytes]
) -> Pipelined:
    """LOG_METRIC(S) from its record tails (the fast path skips decoding a Request)."""
    return Pipelined(handlers.accept_log(ctx, who, commit, tails), opcode, len(tails))


def accept_log_at(
    ctx: Context, who: Identity, commit: str, records: bytes, count: int, latest: int
) -> Pipelined:
    """LOG_METRICS_AT from its records (the fast path skips decoding a Request)."""
    future = handlers.accept_log_at(ctx, who, commit, records, count, latest)
    return Pipelined(future, Opcode.LOG_METRICS_AT, count)


def dispatch(ctx: Context, who: Identity, req: Request) -> Outcome:
    if rate_limited(req):
        if ctx.limiter.shared:  # counted in Redis as the request runs
            barrier = _dispatch(ctx, who, req)
            assert isinstance(barrier, Barrier)  # every rate-limited request is one
            return Barrier(req, who, partial(_counted, ctx, who, barrier.run))
        ctx.limiter.check(who.user)
    return _dispatch(ctx, who, req)


async def _counted(
    ctx: Context, who: Identity, run: Callable[[], Awaitable[Response] | Response]
) -> Response:
    await ctx.limiter.count(who.user)
    result = run()
    return await result if isinstance(result, Awaitable) else result


def _dispatch(ctx: Context, who: Identity, req: Request) -> Outcome:
    match req:
        case LogMetric() | LogMetrics():
            return accept_log(ctx, who, req.OPCODE, req.commit_hex, req.tails())
        case LogMetricsAt():
            latest = max_timestamp(req.records)
            return accept_log_at(ctx, who, req.commit_hex, req.records, req.count, latest)
        case WatchMetrics():
            return StartWatch(req.key_hash, handlers.watch_metrics(ctx, who, req))
        case WhoAmI():
            return Barrier(req, who, partial(handlers.whoami, ctx, who))
        case PrunePreview():
            return Barrier(req, who, partial(handlers.prune_preview, ctx, who, req))
        case QueueJob() | QueueJobSpec():
            return Barrier(req, who, partial(handlers.queue_job, ctx, who, req))
        case Status():
            return Barrier(req, who, partial(handlers.status, ctx, who, req))
        case CancelJob():
            return Barrier(req, who, partial(handlers.cancel_job, ctx, who, req))
        case Prune():
            return Barrier(req, who, partial(handlers.prune, ctx, who, req))
        case GetExperiment():
            return Barrier(req, who, partial(handlers.get_experiment, ctx, who, req))
        case CreateExperiment():
            return Barrier(req, who, partial(handlers.create_experiment, ctx, who, req))
        case ListExperiments():
            return Barrier(req, who, partial(handlers.list_experiments, ctx, who, req))
        case QueryMetrics():
            return Barrier(req, who, partial(handlers.query_metrics, ctx, who, req))
        case ClaimJob():
            return Barrier(req, who, partial(handlers.claim_job, ctx, who, req))
        case UpdateJob():
            return Barrier(req, who, partial(handlers.update_job, ctx, who, req))
        case UpdateRun():
            return Barrier(req, who, partial(handlers.update_run, ctx, who, req))
        case ListRuns():
            return Barrier(req, who, partial(handlers.list_runs, ctx, who, req))
        case _:
            assert_never(req)


def rate_limited(req: Request) -> bool:
    """Control requests count toward `rate_limit.control_requests_per_minute`; ingest,
    watches, heartbeats and claims (clients bound them with backoff) and heavy queries
    (they wait for a per-user slot instead) never do."""
    match req:
        case (
            LogMetric()
            | LogMetrics()
            | LogMetricsAt()
            | WatchMetrics()
            | ClaimJob()
            | GetExperiment()
            | UpdateRun()
        ):
            return False
        case UpdateJob():
            return req.status != JobStatus.RUNNING
        case QueryMetrics():
            return not is_heavy(req)
        case _:
            return True
