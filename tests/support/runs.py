"""A run as the daemon reports it, for tests that read runs back."""

from dataclasses import dataclass

from fetchml.client import Metric, Run


@dataclass(frozen=True)
class Stored:
    """A run as the daemon reports it: its document and every record, in log order."""

    run: Run
    records: list[Metric]

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(r.step, r.value) for r in self.records if r.name == name]

    @property
    def names(self) -> set[str]:
        return {r.name for r in self.records}
