"""`fetchml watch`'s screen: the latest value per metric, as a table or a plotext chart."""

import asyncio
import math
import sys
import time
from typing import Any

from .extras import load_optional
from .models import Metric
from .output import emit, metrics_table

REDRAW_S = 0.25
CLEAR = "\x1b[H\x1b[2J"


class LiveView:
    """The latest value per name, drawn as a table or a plotext chart.

    Data is drawn at once, then at most every `interval` seconds: what arrives
    sooner is drawn when the interval ends, so the screen always ends up current.
    """

    def __init__(self, commit: str, plot: bool, interval: float) -> None:
        self.commit = commit
        self.latest: dict[str, Metric] = {}
        self.series: dict[str, tuple[list[int], list[float]]] = {}
        self.plt = load_optional("plotext", "plot", "watch --plot") if plot else None
        self.tty = sys.stdout.isatty()
        self.interval = interval
        self.drawn: float | None = None
        """When data was last drawn (the placeholder before any data does not count)."""
        self.later: asyncio.TimerHandle | None = None

    def add(self, records: tuple[Metric, ...]) -> None:
        for record in records:
            self.latest[record.name] = record
            if self.plt is not None and math.isfinite(record.value):
                steps, values = self.series.setdefault(record.name, ([], []))
                steps.append(record.step)
                values.append(record.value)
                if len(steps) > 4000:
                    del steps[:2000], values[:2000]

    def update(self, final: bool = False) -> None:
        """Draw now, or when `interval` has passed since data was last drawn."""
        wait = 0.0 if final or self.drawn is None else self.drawn + self.interval - time.monotonic()
        if wait <= 0:
            self.draw()
        elif self.later is None:
            self.later = asyncio.get_running_loop().call_later(wait, self.draw)

    def draw(self) -> None:
        self.cancel()
        if self.latest:
            self.drawn = time.monotonic()
        if self.plt is not None:
            title = f"{self.commit[:12]}: {len(self.latest)} metric(s)"
            chart = render_chart(self.plt, self.series, title, color=self.tty)
            emit((CLEAR if self.tty else "") + chart)
            return
        body = (
            metrics_table(sorted(self.latest.values(), key=lambda r: r.name))
            if self.latest
            else "(waiting for metrics)"
        )
        emit((CLEAR if self.tty else "") + f"watching {self.commit}\n{body}")

    def cancel(self) -> None:
        """Drop a pending redraw."""
        if self.later is not None:
            self.later.cancel()
            self.later = None


def render_chart(
    plt: Any, series: dict[str, tuple[list[int], list[float]]], title: str, color: bool
) -> str:
    """A line per metric (x = step) as text, with plotext 6 (plt.figure) or plotext 5."""
    if hasattr(plt, "figure") and hasattr(plt.figure, "signal"):
        fig = plt.figure
        fig.clear.data()
        fig.title(title)
        for name, (steps, values) in series.items():
            fig.draw(fig.signal(steps, values).label(name).lines())
        return str(fig.build().string(colorless=not color))
    plt.clear_data()
    if not color:
        plt.theme("clear")
    plt.title(title)
    for name, (steps, values) in series.items():
        plt.plot(steps, values, label=name)
    return str(plt.build())
