"""The experiment count of `GET /health`, cached so that a health check costs O(1)."""

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

REFRESH_S = 10.0
"""The data directory is listed at most this often for /health."""


class CachedCount:
    """`count()` recomputed at most every `refresh_s` seconds of `clock`.

    A count that fails (OSError: the data directory cannot be listed) is logged and
    leaves the last good value (None before the first); `ok` says whether the latest
    try succeeded.
    """

    def __init__(
        self,
        count: Callable[[], int],
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._count = count
        self.refresh_s = refresh_s
        self.clock = clock
        self.value: int | None = None
        self.ok = True
        self._at: float | None = None

    def get(self) -> int | None:
        now = self.clock()
        if self._at is None or not 0 <= now - self._at < self.refresh_s:
            self._at = now
            try:
                self.value = self._count()
                self.ok = True
            except OSError as exc:
                logger.warning("health: cannot count experiments: %s", exc)
                self.ok = False
        return self.value
