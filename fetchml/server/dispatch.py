"""One `match` over the Request union: what each opcode turns into."""

import asyncio
from collections.abc import Coroutine
from typing import Any, assert_never

from fetchml.protocol.enums import JobStatus
from fetchml.protocol.requests import (
    CancelJob,
    ClaimJob,
    CreateExperiment,
    GetExperiment,
    ListExperiments,
    LogMetric,
    LogMetrics,
    Prune,
    PrunePreview,
    QueryMetrics,
    QueueJob,
    Request,
    Status,
    UpdateJob,
    WatchMetrics,
    WhoAmI,
)
from fetchml.protocol.responses import Response

from . import handlers
from .auth import Identity
from .handlers import Context
from .query import is_heavy
from .watch import Subscriber


def dispatch(
    ctx: Context, who: Identity, req: Request
) -> "asyncio.Future[int] | Coroutine[Any, Any, Response] | Subscriber | Response":
    """A future (metrics queued for group commit), a coroutine to run in order,
    a watch subscriber, or a ready response."""
    match req:
        case LogMetric() | LogMetrics():
            return handlers.accept_log(ctx, who, req.commit_hex, req.tails())
        case WatchMetrics():
            return handlers.watch_metrics(ctx, who, req)
        case WhoAmI():
            return handlers.whoami(who)
        case QueueJob():
            return handlers.queue_job(ctx, who, req)
        case Status():
            return handlers.status(ctx, who, req)
        case CancelJob():
            return handlers.cancel_job(ctx, who, req)
        case Prune():
            return handlers.prune(ctx, who, req)
        case PrunePreview():
            return handlers.prune_preview(ctx, who, req)
        case GetExperiment():
            return handlers.get_experiment(ctx, who, req)
        case CreateExperiment():
            return handlers.create_experiment(ctx, who, req)
        case ListExperiments():
            return handlers.list_experiments(ctx, who, req)
        case QueryMetrics():
            return handlers.query_metrics(ctx, who, req)
        case ClaimJob():
            return handlers.claim_job(ctx, who, req)
        case UpdateJob():
            return handlers.update_job(ctx, who, req)
        case _:
            assert_never(req)


def rate_limited(req: Request) -> bool:
    """Control requests count toward `rate_limit.control_requests_per_minute`; ingest,
    watches, heartbeats and claims (clients bound them with backoff) and heavy queries
    (they wait for a per-user slot instead) never do."""
    match req:
        case LogMetric() | LogMetrics() | WatchMetrics() | ClaimJob() | GetExperiment():
            return False
        case UpdateJob():
            return req.status != JobStatus.RUNNING
        case QueryMetrics():
            return not is_heavy(req)
        case _:
            return True
