"""The experiments the store holds open, least recently used first.

At most `max_open` are held (and so at most that many append descriptors), except
busy ones, which stay until idle. An evicted experiment leaves its FileState
behind, so a LIST or its return need not scan the file again. Event loop only.
"""

from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from .experiment import Experiment, FileState, Phase
from .files import check_commit


class OpenExperiments:
    def __init__(self, base: Path, max_open: int, on_evict: Callable[[Experiment], None]) -> None:
        self.base = base
        self.max_open = max_open
        self._on_evict = on_evict
        self._held: OrderedDict[str, Experiment] = OrderedDict()
        self.known: dict[str, FileState] = {}
        """What was known of experiments no longer held."""

    def get(self, commit: str) -> Experiment:
        """The experiment, held and used last; made (and others evicted) when new."""
        exp = self._held.get(commit)
        if exp is not None:
            self._held.move_to_end(commit)
            return exp
        exp = Experiment(commit, self.base / check_commit(commit))
        known = self.known.pop(commit, None)
        if known is not None:  # the size is checked before it is trusted (experiment.refresh)
            exp.settle(known, None)
        self._held[commit] = exp
        self.evict(keep=commit)
        return exp

    def held(self, commit: str) -> Experiment | None:
        return self._held.get(commit)

    def __contains__(self, commit: str) -> bool:
        return commit in self._held

    def __iter__(self) -> Iterator[Experiment]:
        return iter(list(self._held.values()))

    def drop(self, commit: str) -> None:
        """Forget an experiment (removed from outside or pruned), known state included."""
        self._held.pop(commit, None)
        self.known.pop(commit, None)

    def evict(self, keep: str = "") -> None:
        """Forget idle experiments, oldest use first, until at most max_open are held."""
        excess = len(self._held) - self.max_open
        if excess <= 0:  # after every flush: the usual case costs no copy of the dict
            return
        for commit, exp in list(self._held.items()):
            if excess <= 0:
                return
            if commit != keep and not exp.busy:
                exp.close()
                del self._held[commit]
                if exp.phase is not Phase.UNSCANNED:
                    self.known[commit] = exp.state
                self._on_evict(exp)
                excess -= 1

    def close(self) -> None:
        for exp in self._held.values():
            exp.close()
        self._held.clear()
