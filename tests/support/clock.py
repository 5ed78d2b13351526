"""A settable clock that stands in for a module's `_now` (Unix seconds)."""

import pytest


class Clock:
    """`t` is the current Unix second; patch it over a module's `_now` with `install`."""

    def __init__(self, t: int = 1_764_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch, module: object) -> "Clock":
        clock = cls()
        monkeypatch.setattr(module, "_now", clock)
        return clock
