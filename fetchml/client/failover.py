"""Which of the client's URLs to connect to next, and how long to wait before it.

`Client.connect` tries the URLs of its settings once, in order, and takes the
first that answers. Every reconnect loop (the MetricLogger's shipper, a watch,
the worker's link) keeps one `Failover` over them. The first URL is tried first. A connection that cannot be opened, or a session
that fails, moves to the next URL at once; the loop's own backoff applies only
once the whole list has failed in a row: `delay(rounds)` after the last URL of
each such round, rounds counting from 1. A connection that worked and then died
moves to the next URL too, with no wait. With one URL this is the loop's
backoff after every failure, as it was before URL lists.
"""

from collections.abc import Callable, Sequence


class Failover:
    def __init__(self, urls: Sequence[str], delay: Callable[[int], float]) -> None:
        assert urls, "at least one URL"
        self.urls = tuple(urls)
        self._delay = delay
        self._at = 0
        self.failures = 0
        """Attempts that failed in a row, on any URL."""

    @property
    def url(self) -> str:
        """The URL to try next."""
        return self.urls[self._at]

    @property
    def rounds(self) -> int:
        """How many times in a row every URL has failed."""
        return self.failures // len(self.urls)

    def failed(self) -> float:
        """The current URL failed: move to the next; the seconds to wait before trying it."""
        self.failures += 1
        self._at = (self._at + 1) % len(self.urls)
        return 0.0 if self.failures % len(self.urls) else self._delay(self.rounds)

    def succeeded(self) -> None:
        """The current URL works: stay on it, and start counting failures afresh."""
        self.failures = 0

    def dropped(self) -> None:
        """A connection that worked died: the next URL, at once."""
        self.failures = 0
        self._at = (self._at + 1) % len(self.urls)
