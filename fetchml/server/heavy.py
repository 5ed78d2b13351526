"""Heavy queries: at most `server.heavy_queries_per_user` at once per user.

Downsampling and whole-experiment scans run in worker threads; this bounds how
many one user runs at a time. Beyond the limit a query waits, first in first
out per user, and is never refused; other users' queries do not wait for it.
"""

import contextlib
from collections.abc import AsyncIterator

import anyio


class HeavyLimiter:
    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._users: dict[str, anyio.Semaphore] = {}

    @contextlib.asynccontextmanager
    async def slot(self, user: str) -> AsyncIterator[None]:
        """Hold one of the user's slots; waits in FIFO order while all are taken."""
        sem = self._users.get(user)
        if sem is None:
            sem = self._users[user] = anyio.Semaphore(self.per_user)
        try:
            async with sem:  # FIFO; a cancelled waiter leaves the queue, a holder frees its slot
                yield
        finally:
            if sem.value == self.per_user and not sem.statistics().tasks_waiting:
                self._users.pop(user, None)

    def running(self, user: str) -> int:
        """Queries of `user` holding a slot now."""
        sem = self._users.get(user)
        return self.per_user - sem.value if sem else 0
