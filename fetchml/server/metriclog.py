"""MetricLog: what the request handlers need of experiment storage.

ExperimentStore (storage.py) is the one implementation, on local files; another
backend (a cluster's, say) implements the same methods.
"""

import asyncio
from typing import Literal, Protocol

from fetchml.protocol.records import Metadata

from .listing import ExperimentInfo
from .offsets import Chunk

PruneKind = Literal["keep", "older"]


class MetricLog(Protocol):
    def exists(self, commit: str) -> bool: ...

    def metadata(self, commit: str) -> Metadata | None:
        """None when unreadable or damaged; NotFound when absent."""

    def damaged(self, commit: str) -> str | None: ...

    async def create(self, meta: Metadata) -> None:
        """AlreadyExists when present."""

    def submit(self, commit: str, data: bytes, count: int) -> "asyncio.Future[int]":
        """Queue whole encoded records; the future gives the first one's index once stored."""

    async def count(self, commit: str) -> int: ...

    async def read(
        self, commit: str, start: int = 0, max_bytes: int = ..., max_records: int = 0
    ) -> Chunk:
        """Whole records from index `start`: at least one, at most `max_bytes` and
        `max_records` (0: no count limit)."""

    async def list_experiments(self) -> list[ExperimentInfo]: ...

    async def prune(
        self, kind: PruneKind, value: int, now: float | None = None, owner: str | None = None
    ) -> list[str]: ...

    def prune_selection(
        self, kind: PruneKind, value: int, now: float | None = None, owner: str | None = None
    ) -> list[str]: ...
