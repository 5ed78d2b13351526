"""Admission state per peer address: bad-key throttling and connections without a valid key.

Both are plain bookkeeping with an injected clock (no I/O); the gate and the
connections act on what they answer. The state lives in this process only.
"""

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

FAILURES = 10
"""Failures from one address within WINDOW_S that throttle it."""
WINDOW_S = 60.0
BACKOFF_S = 1.0
"""The first throttle lasts this long; each further one twice as long as the one before."""
MAX_BACKOFF_S = 600.0
FORGET_S = 600.0
"""An address with no failure for this long starts again from BACKOFF_S."""
MAX_PEERS = 10_000
"""Addresses remembered; beyond it the least recently failing one is forgotten."""

T = TypeVar("T")


@dataclass(slots=True)
class _Peer:
    failures: collections.deque[float] = field(default_factory=collections.deque)
    strikes: int = 0
    until: float = 0.0
    last: float = 0.0


class Throttle:
    """Failures per address in a sliding window; FAILURES of them throttle the address
    for a backoff that doubles with each throttle (up to MAX_BACKOFF_S)."""

    def __init__(
        self,
        failures: int = FAILURES,
        window_s: float = WINDOW_S,
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.max_peers = max_peers
        self.clock = clock
        self._peers: collections.OrderedDict[str, _Peer] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def failure(self, peer: str) -> float:
        """Count one failure; the seconds `peer` is throttled for from now (0: not throttled).
        The failure that reaches the limit starts a new, longer backoff."""
        now = self.clock()
        state = self._peers.pop(peer, None) or _Peer()
        self._peers[peer] = state  # most recently failing last
        if len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        if now - state.last > FORGET_S:
            state.strikes = 0
        state.last = now
        window = state.failures
        while window and window[0] <= now - self.window_s:
            window.popleft()
        window.append(now)
        if len(window) >= self.failures:
            window.clear()
            state.strikes += 1
            backoff = min(BACKOFF_S * 2 ** (state.strikes - 1), MAX_BACKOFF_S)
            state.until = max(state.until, now + backoff)
        return max(0.0, state.until - now)

    def retry_after(self, peer: str) -> float:
        """Seconds until `peer` may connect without a key again (0: now)."""
        state = self._peers.get(peer)
        return max(0.0, state.until - self.clock()) if state else 0.0

    async def refresh(self, peer: str) -> None:
        """Learn whether `peer` is throttled elsewhere (cluster mode)."""

    async def flush(self) -> None:
        """Share the failures counted since the last flush (cluster mode)."""


class Unverified(Generic[T]):
    """Connections that have not shown a valid key yet, by address, oldest first."""

    def __init__(self) -> None:
        self._since: dict[T, tuple[str, float]] = {}
        self._per_peer: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._since)

    def __contains__(self, conn: T) -> bool:
        return conn in self._since

    def add(self, conn: T, peer: str, now: float) -> None:
        self._since[conn] = (peer, now)
        self._per_peer[peer] += 1

    def discard(self, conn: T) -> None:
        entry = self._since.pop(conn, None)
        if entry is not None:
            peer = entry[0]
            self._per_peer[peer] -= 1
            if not self._per_peer[peer]:
                del self._per_peer[peer]

    def count(self, peer: str) -> int:
        return self._per_peer.get(peer, 0)

    def oldest(self) -> T | None:
        return next(iter(self._since), None)

    def expired(self, now: float, timeout_s: float) -> list[T]:
        """The connections added `timeout_s` or more before `now`, oldest first."""
        out = []
        for conn, (_, since) in self._since.items():
            if now - since < timeout_s:
                break
            out.append(conn)
        return out
