"""The audit file: JSON lines of mutations and authentication failures, size-capped and
rotated. A failing write is logged (rate-limited) and counted, never raised: the
mutation it records has been applied and is answered as such."""

import json
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from .auth import Identity

logger = logging.getLogger(__name__)

REPORT_EVERY_S = 60.0
"""Audit write errors and authentication failures are reported once per address per minute."""
MAX_PENDING_PEERS = 10_000


class AuditLog:
    """Appends JSON lines to `path` ("" = off). Beyond `max_bytes` the file is rotated:
    path -> path.1 -> ... -> path.<keep> (the oldest dropped)."""

    def __init__(
        self,
        path: str,
        max_bytes: int = 10 << 20,
        keep: int = 5,
        on_error: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.on_error = on_error
        self.clock = clock
        self._fd: int | None = None
        self._size = 0
        self._regular = False
        self._errors = 0
        self._reported = -REPORT_EVERY_S
        if path:
            self._open()  # a bad path fails the start, naming the file

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        info = os.fstat(fd)
        self._fd, self._size, self._regular = fd, info.st_size, stat.S_ISREG(info.st_mode)

    def __call__(self, event: str, who: Identity | None, **fields: Any) -> None:
        if not self.path:
            return
        entry = {"ts": round(time.time(), 3), "event": event, "user": who.user if who else None}
        entry.update(fields)
        line = (json.dumps(entry, default=str) + "\n").encode()
        try:
            if self._fd is None:
                self._open()
            elif self._regular and self._size + len(line) > self.max_bytes and self._size:
                self._rotate()
            assert self._fd is not None
            self._size += os.write(self._fd, line)
        except OSError as exc:
            self._failed(exc)

    def _rotate(self) -> None:
        self.close()
        if self.keep:
            for n in range(self.keep - 1, 0, -1):
                if os.path.exists(f"{self.path}.{n}"):
                    os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        self._open()

    def _failed(self, exc: OSError) -> None:
        self.on_error()
        self._errors += 1
        now = self.clock()
        if now - self._reported >= REPORT_EVERY_S:
            logger.error(
                "audit file %s: %s (%d failed writes since the last report; "
                "reported at most once a minute)",
                self.path,
                exc.strerror or exc,
                self._errors,
            )
            self._reported, self._errors = now, 0

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class AuthFailures:
    """Authentication failures, reported (audit line and log line) at most once per address
    per minute, with the count since the previous report: a flood of bad keys costs a line
    a minute, not a line a frame."""

    def __init__(
        self,
        audit: Callable[..., None],
        clock: Callable[[], float] = time.monotonic,
        max_peers: int = MAX_PENDING_PEERS,
    ) -> None:
        self.audit = audit
        self.clock = clock
        self.max_peers = max_peers
        self._last: dict[str, float] = {}
        """When each address was last reported (only within the last minute)."""
        self._pending: dict[str, tuple[int, str]] = {}
        """Failures not reported yet: count and the last reason, by address."""

    def add(self, peer: str, reason: str) -> None:
        now = self.clock()
        self._pending[peer] = (self._pending.get(peer, (0, ""))[0] + 1, reason)
        last = self._last.get(peer)
        if last is None or now - last >= REPORT_EVERY_S:
            self._report(peer, now)
        elif len(self._last) > self.max_peers:  # addresses sprayed: report all, start over
            self.flush(force=True)
            self._last.clear()

    def flush(self, force: bool = False) -> None:
        """Report the addresses whose minute is over (every one when `force`)."""
        now = self.clock()
        for peer in list(self._pending):
            if force or now - self._last.get(peer, now - REPORT_EVERY_S) >= REPORT_EVERY_S:
                self._report(peer, now)
        for peer, last in list(self._last.items()):
            if now - last >= REPORT_EVERY_S and peer not in self._pending:
                del self._last[peer]

    def _report(self, peer: str, now: float) -> None:
        count, reason = self._pending.pop(peer)
        self._last[peer] = now
        self.audit("auth_failure", None, peer=peer, reason=reason, count=count)
        logger.warning(
            "authentication failed from %s: %s (%d since the last report)", peer, reason, count
        )
