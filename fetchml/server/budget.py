"""One memory budget (`storage.cache_bytes`) for every cache the store keeps: the
record-offset indexes and the per-name metric columns.

Each cache entry is charged with its size and a way to drop it. While the total
is over the limit, the least recently charged entries are dropped first; an
entry that is in use refuses (its drop returns False) and stays, and so does the
entry charged last, so the one being read is never rebuilt on every read.
"""

from collections import OrderedDict
from collections.abc import Callable, Hashable

Drop = Callable[[], bool]
"""Free the entry and return True, or return False when it is in use."""


class CacheBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._entries: OrderedDict[Hashable, tuple[int, Drop]] = OrderedDict()

    def charge(self, key: Hashable, nbytes: int, drop: Drop) -> None:
        """Record that `key` holds `nbytes` now (and was used last); then trim."""
        self.forget(key)
        self._entries[key] = (nbytes, drop)
        self.held += nbytes
        self.trim(keep=key)

    def forget(self, key: Hashable) -> None:
        """The entry was freed by its owner."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.held -= old[0]

    def trim(self, keep: Hashable = None) -> None:
        if self.held <= self.limit:  # the common case, without copying the keys
            return
        for key in list(self._entries):
            if self.held <= self.limit:
                return
            nbytes, drop = self._entries[key]
            if key != keep and drop():
                del self._entries[key]
                self.held -= nbytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries
