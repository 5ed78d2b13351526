"""What the load generator (scripts/bench_load.py) measures, as typed records.

bench_load.py prints one `Report` as JSON on the last line of its stdout;
scripts/bench.py reads it back with `read_report`, into the same classes.
"""

import json
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints


@dataclass
class Percentiles:
    """Milliseconds, nearest rank."""

    p50: float
    p90: float
    p99: float
    max: float


@dataclass
class Stream:
    """One connection's pipelined run."""

    sent: int = 0
    ok: int = 0
    """Requests answered with SUCCESS."""
    answered: int = 0
    seconds: float = 0.0
    """From the first send to the last answer."""


@dataclass
class Pipeline:
    per_message: int
    streams: list[Stream]

    @property
    def messages_per_second(self) -> float | None:
        """Successful messages over the whole run, all connections together."""
        seconds = max((s.seconds for s in self.streams), default=0.0)
        return sum(s.ok for s in self.streams) / seconds if seconds else None

    @property
    def metrics_per_second(self) -> float | None:
        rate = self.messages_per_second
        return None if rate is None else rate * self.per_message

    @property
    def fairness(self) -> float | None:
        """Slowest over fastest connection, in messages per second."""
        rates = [s.ok / s.seconds for s in self.streams if s.seconds]
        return min(rates) / max(rates) if rates else None

    def acked(self, stream: int = 0) -> int:
        """Metrics acknowledged on one connection."""
        return self.streams[stream].ok * self.per_message if self.streams else 0


@dataclass
class Paced:
    per_message: int
    sent: int
    ok: int
    rate: float
    """Frames per second actually sent."""
    latency_ms: Percentiles | None
    """Request to answer."""


@dataclass
class Pass:
    """Paging through a whole experiment."""

    records: int
    pages: int
    seconds: float

    @property
    def records_per_second(self) -> float | None:
        return self.records / self.seconds if self.seconds else None


@dataclass
class Reads:
    first_pass: Pass
    second_pass: Pass
    latest_ms: float
    latest_points: list[tuple[str, int, float]]
    lttb_ms: float
    """Median of the timed runs."""
    lttb_points: list[tuple[str, int, float]]


@dataclass
class Watch:
    watchers: int
    ok: int
    ack_latency_ms: Percentiles | None
    push_latency_ms: Percentiles | None
    """A written message's send to the first push reaching past its records."""
    samples: int
    silent: int = 0
    """Watchers that got no push at all (within the push timeout after the last write)."""


@dataclass
class Watchers:
    watchers: int
    records: int
    pushes: int
    slow_closes: int


@dataclass
class Idle:
    connections: int


@dataclass
class Claims:
    """Idle claim loops, one connection each, as `fetchml worker` slots with no jobs."""

    workers: int
    claims: int
    """CLAIM_JOB requests answered (with no job) after the first round."""


Result = Pipeline | Paced | Reads | Watch | Watchers | Idle | Claims
MODES: dict[str, type[Result]] = {
    "pipeline": Pipeline,
    "paced": Paced,
    "reads": Reads,
    "watch": Watch,
    "watchers": Watchers,
    "idle": Idle,
    "claims": Claims,
}


@dataclass
class Report:
    """One load generator run: its result (None when it failed) and what went wrong."""

    mode: str
    result: Result | None
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "mode": self.mode,
                "result": None if self.result is None else asdict(self.result),
                "errors": self.errors,
            }
        )


def read_report(line: str) -> Report:
    """A Report from bench_load.py's JSON line (ValueError when it is not one)."""
    data = json.loads(line)
    mode = data["mode"]
    if mode not in MODES:
        raise ValueError(f"unknown load mode {mode!r}")
    result = None if data["result"] is None else build(MODES[mode], data["result"])
    return Report(mode, result, [str(e) for e in data["errors"]])


T = TypeVar("T")


def build(cls: type[T], data: dict[str, Any]) -> T:
    """A dataclass from its asdict() form, nested records and tuples included."""
    hints = get_type_hints(cls)
    return cls(**{f.name: convert(hints[f.name], data[f.name]) for f in fields(cls)})  # type: ignore[arg-type]


def convert(hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if value is None:
        return None
    if origin in (Union, types.UnionType):
        (inner,) = (a for a in get_args(hint) if a is not type(None))
        return convert(inner, value)
    if isinstance(hint, type) and is_dataclass(hint):
        return build(hint, value)
    if origin is list:
        (item,) = get_args(hint)
        return [convert(item, v) for v in value]
    if origin is tuple:
        return tuple(value)
    return value
