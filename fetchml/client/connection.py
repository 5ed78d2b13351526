"""The async Client: typed methods for every opcode over one pipelined connection.

Many calls may be in flight at once (see pipeline.py); each awaits its own
response. Errors from the daemon raise FetchmlError subclasses carrying the
protocol ErrorCode and the server's message; a dropped connection raises
ConnectionLost in every pending call. `watch()` streams on its own connection.

Usage::

    async with Client.connect("ws://127.0.0.1:9103/ws", api_key=KEY) as c:
        await c.log_metric(commit, "loss", 0.25, step=10)
        print(await c.latest(commit))
"""

import json
from collections.abc import Callable, Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from fetchml.protocol import requests as rq
from fetchml.protocol.enums import JobStatus, PruneType
from fetchml.protocol.errors import MalformedRequest
from fetchml.protocol.responses import StatusReport
from fetchml.protocol.rules import DEFAULT_PRIORITY

from .errors import AlreadyExists, ConnectFailed, InvalidRequest, ProtocolViolation
from .metrics import MetricsAPI
from .models import (
    Experiment,
    ExperimentSummary,
    Job,
    Status,
    WhoAmI,
    parse_commit,
    pruned_from_json,
)
from .pipeline import MAX_IN_FLIGHT, MAX_MESSAGE_BYTES, describe_response, parse_json
from .runs import RunsAPI
from .settings import resolve_settings
from .transport import EventHandler, open_websocket, unreachable


class Client(MetricsAPI, RunsAPI):
    """A connection to the daemon; create it with `Client.connect(...)`."""

    @classmethod
    def connect(
        cls,
        url: str | None = None,
        api_key: str | None = None,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        on_event: EventHandler | None = None,
        open_timeout: float = 10.0,
        config_path: Path | None = None,
        handshake_key: bool = True,
        keepalive: bool = True,
    ) -> "_Connect":
        """`async with Client.connect(...) as c` or `c = await Client.connect(...)`.

        `url` and `api_key` default to FETCHML_URL / FETCHML_API_KEY, then
        `api_url` / `api_key` in ~/.ml/config.toml; the URL to ws://127.0.0.1:9103/ws.
        Several URLs (comma-separated) are tried in order: the client connects to the
        first that answers (`url`), and its watches start there.
        The raw key goes in the handshake (`X-API-Key`) unless `handshake_key=False`,
        so a wrong key raises AuthenticationFailed here. `keepalive=False` sends no
        pings: for a caller that times its own requests out (the worker).
        """

        async def open_client() -> Client:
            settings = resolve_settings(url, api_key, config_path=config_path)
            key = settings.api_key if handshake_key else None
            ping = 20.0 if keepalive else None
            failures: list[ConnectFailed] = []
            for option in settings.urls:
                try:
                    ws = await open_websocket(option, open_timeout, key, ping)
                    break
                except ConnectFailed as exc:
                    failures.append(exc)
            else:
                raise unreachable(failures)
            return cls(
                ws,
                settings.starting_at(option),
                max_in_flight=max_in_flight,
                max_message_bytes=max_message_bytes,
                on_event=on_event,
                open_timeout=open_timeout,
            )

        return _Connect(open_client)

    # -- jobs ------------------------------------------------------------------

    async def whoami(self) -> WhoAmI:
        return await self._json(rq.WhoAmI(key_hash=self._key), "whoami", WhoAmI.from_json)

    async def status(self) -> Status:
        response = await self._call(rq.Status(key_hash=self._key))
        if not isinstance(response, StatusReport):
            raise ProtocolViolation(f"expected STATUS, got {describe_response(response)}")
        return parse_json(response.status_json.encode(), Status.from_json)

    async def queue_job(
        self,
        job_name: str,
        commit: str | bytes,
        priority: int = DEFAULT_PRIORITY,
        *,
        spec: Mapping[str, Any] | None = None,
    ) -> Job:
        """Queue a job (creating the experiment when it does not exist); priority 0..255.
        With `spec` (command, env, workdir, max_attempts, timeout_s) a worker can run it."""
        commit_id = parse_commit(commit)
        try:
            request: rq.QueueJob | rq.QueueJobSpec
            if spec is None:
                request = rq.QueueJob(
                    key_hash=self._key, commit_id=commit_id, priority=priority, job_name=job_name
                )
            else:
                request = rq.QueueJobSpec(
                    key_hash=self._key,
                    commit_id=commit_id,
                    priority=priority,
                    job_name=job_name,
                    spec=json.dumps(dict(spec), ensure_ascii=False, allow_nan=False),
                )
        except (MalformedRequest, ValueError, TypeError) as exc:
            raise InvalidRequest(f"spec: {exc}" if spec is not None else str(exc)) from None
        return await self._json(request, "job", Job.from_json)

    async def cancel_job(self, job: str) -> int:
        """Cancel a job by its ID, or every queued or running job of that name you may
        update (an exact ID wins over names); return how many."""
        message = await self._success(rq.CancelJob(key_hash=self._key, job_name=job))
        words = message.split()
        return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0

    async def claim_job(self, worker_id: str) -> Job | None:
        """Take the next queued job (None when the queue is empty)."""
        request = rq.ClaimJob(key_hash=self._key, worker_id=worker_id)
        return await self._json(request, "job", lambda o: None if o is None else Job.from_json(o))

    async def update_job(
        self,
        job_id: str,
        status: JobStatus | str,
        error: str = "",
        *,
        worker_id: str | None = None,
    ) -> str:
        """Set a running job's status (running, completed or failed); return the server's
        message. `running` on a running job is a heartbeat. With `worker_id`, a job that
        was given to another worker meanwhile is INVALID_REQUEST "job reassigned"."""
        if isinstance(status, str):
            try:
                status = JobStatus[status.upper()]
            except KeyError:
                raise InvalidRequest(f"unknown job status {status!r}") from None
        try:
            request = rq.UpdateJob(
                key_hash=self._key, job_id=job_id, status=status, error=error, worker_id=worker_id
            )
        except MalformedRequest as exc:
            raise InvalidRequest(exc.message) from None
        return await self._success(request)

    async def prune(
        self, *, keep: int | None = None, older_than_days: int | None = None
    ) -> list[str]:
        """Remove experiments: keep the newest `keep`, or those older than N days. Returns commits."""
        if (keep is None) == (older_than_days is None):
            raise InvalidRequest("prune needs exactly one of keep= or older_than_days=")
        kind = PruneType.KEEP_NEWEST if keep is not None else PruneType.OLDER_THAN_DAYS
        value = keep if keep is not None else older_than_days
        assert value is not None
        if not 1 <= value <= 0xFFFFFFFF:
            raise InvalidRequest(f"prune value must be at least 1, got {value}")
        request = rq.Prune(key_hash=self._key, prune_type=kind, value=value)
        return await self._json(request, "pruned", pruned_from_json)

    # -- experiments -----------------------------------------------------------

    async def create_experiment(
        self, commit: str | bytes, job_name: str = "", *, exist_ok: bool = False
    ) -> bool:
        """Create an experiment; True if created, False if it existed (only with exist_ok)."""
        request = rq.CreateExperiment(
            key_hash=self._key, commit_id=parse_commit(commit), job_name=job_name
        )
        try:
            await self._success(request)
        except AlreadyExists:
            if not exist_ok:
                raise
            return False
        return True

    async def get_experiment(self, commit: str | bytes) -> Experiment:
        request = rq.GetExperiment(key_hash=self._key, commit_id=parse_commit(commit))
        return await self._json(request, "experiment", Experiment.from_json)

    async def list_experiments(self) -> list[ExperimentSummary]:
        """The experiments you may see, newest first."""
        request = rq.ListExperiments(key_hash=self._key)
        return await self._json(
            request, "experiments", lambda rows: [ExperimentSummary.from_json(r) for r in rows]
        )

    async def prune_preview(
        self, *, keep: int | None = None, older_than_days: int | None = None
    ) -> list[str]:
        """The commits `prune()` with the same arguments would remove now; removes nothing."""
        from .models import prune_selection

        kind, value = prune_selection(keep, older_than_days)
        request = rq.PrunePreview(key_hash=self._key, prune_type=kind, value=value)
        return await self._json(request, "pruned", pruned_from_json)


class _Connect:
    """What `Client.connect()` returns: awaitable, and an async context manager."""

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._client: Client | None = None

    def __await__(self) -> Generator[Any, None, Client]:
        client: Client = yield from self._opener().__await__()
        return client

    async def __aenter__(self) -> Client:
        self._client = await self
        return self._client

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.close()
