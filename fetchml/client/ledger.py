"""What became of a MetricLogger's points, and each distinct problem, logged once.

The shipper (on the worker thread) records acknowledgements, rejections by
reason and transient problems; the logger (on the caller's thread) reads the
counts and takes the rejections not yet reported as one MetricsRejected.
"""

import logging
from dataclasses import dataclass

from fetchml.protocol.enums import ErrorCode

from .errors import FetchmlError, MetricsRejected

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggerStats:
    buffered: int
    """Points logged and not yet acknowledged (queued or in flight)."""
    acknowledged: int
    dropped: int
    """Points dropped because the buffer was full (on_full="drop")."""
    rejected: int
    """Points refused by the daemon, or whose value the client could not encode."""
    resent_batches: int
    recovered: int
    """Points found stored after a reconnect though their answer was lost (not resent)."""
    reconnects: int
    last_error: FetchmlError | None


class Ledger:
    def __init__(self, label: str) -> None:
        self.label = label
        """The first 12 hex digits of the commit, for log lines."""
        self.acknowledged = 0
        self.rejected = 0
        self.rejections: dict[str, int] = {}
        """Rejected points by reason: the daemon's message, or why the client refused."""
        self.rejected_code = ErrorCode.UNKNOWN_ERROR
        """The code of the first rejection."""
        self.resent_batches = 0
        self.recovered = 0
        self.reconnects = 0
        self.last_error: FetchmlError | None = None
        self.notes: dict[str, int] = {}
        """Each distinct transient problem, with how often it happened."""
        self._reported: dict[str, int] = {}

    def note(self, exc: FetchmlError, what: str) -> None:
        """A transient problem: logged the first time, counted after that."""
        self.last_error = exc
        message = f"metric logger {self.label}: {what}: {exc}"
        seen = self.notes.get(message, 0)
        self.notes[message] = seen + 1
        logger.log(logging.DEBUG if seen else logging.WARNING, "%s", message)

    def reject(self, count: int, why: str, code: ErrorCode) -> None:
        """Points that will never be stored. Each reason is logged once; flush() and close()
        report the counts."""
        if why not in self.rejections:
            logger.error(
                "metric logger %s: %d point%s rejected: %s (further ones are counted)",
                self.label,
                count,
                "" if count == 1 else "s",
                why,
            )
        if not self.rejected:
            self.rejected_code = code
        self.rejected += count
        self.rejections[why] = self.rejections.get(why, 0) + count

    def unreported(self) -> MetricsRejected | None:
        """The rejections since the last call, as one exception (None if there were none)."""
        new = {
            why: n - self._reported.get(why, 0)
            for why, n in self.rejections.items()
            if why not in self._reported or n > self._reported[why]
        }
        self._reported = dict(self.rejections)
        return MetricsRejected(new, self.rejected_code) if new else None

    def stats(self, buffered: int, dropped: int) -> LoggerStats:
        return LoggerStats(
            buffered=buffered,
            acknowledged=self.acknowledged,
            dropped=dropped,
            rejected=self.rejected,
            resent_batches=self.resent_batches,
            recovered=self.recovered,
            reconnects=self.reconnects,
            last_error=self.last_error,
        )
