"""Every figure scripts/bench reports, declared once, and the tables printed from them.

A figure's name is a template filled with the run's sizes (scripts/bench.py
`Sizes` and its constants), so a quick run names its smaller counts. Figures
that share a `row` (p50 and p99, a rate and its fairness) make one line of the
README's table.
"""

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    limit: float
    of_ratio: bool = False
    """The limit applies to the ratio to the baseline, not to the figure itself."""


@dataclass(frozen=True)
class Figure:
    key: str
    name: str
    unit: str
    baseline: str
    """What the baseline is."""
    higher_is_better: bool
    target: Target | None = None
    row: str = ""
    """README row shared with its neighbours ("" = a row of its own)."""
    label: str = ""
    """The figure within a shared row."""
    ratio: bool = True
    """Whether a ratio to the baseline means something (not for percentiles)."""


ECHO = "echo"
PY_READ = "py read+parse"
ACK_ROW = "LOG_METRIC ack p50 / p99 at {latency_rate:,} metrics/s, {durability}"
STREAM_ROW = "{streams} connections streaming"
PUSH_ROW = "WATCH push p50 / p99, {watchers} watchers"
CLUSTER_PUSH_ROW = (
    "cross-node WATCH push p50 / p99, {cluster_rate:,} metrics/s in LOG_METRICS of {cluster_batch}"
)

FIGURES: tuple[Figure, ...] = (
    Figure(
        "single",
        "LOG_METRIC, 1 metric/msg, pipelined",
        "msg/s",
        ECHO,
        True,
        Target(0.9, of_ratio=True),
    ),
    Figure(
        "onecall",
        "LOG_METRIC one call at a time, Client.log_metric awaited, {onecall_calls:,} calls",
        "calls/s",
        "bare websockets send()+recv()",
        True,
        Target(0.8, of_ratio=True),
    ),
    Figure(
        "sync",
        "LOG_METRIC one blocking call at a time, SyncClient.log_metric, {onecall_calls:,} calls",
        "calls/s",
        "bare websockets sync send()+recv()",
        True,
        Target(0.8, of_ratio=True),
    ),
    *(
        Figure(
            f"ack_{percentile}_{durability}",
            f"LOG_METRIC ack {percentile} at {{latency_rate:,}} metrics/s, {durability}",
            "ms",
            ECHO,
            False,
            Target(p99_limit) if percentile == "p99" else None,
            row=ACK_ROW.replace("{durability}", durability),
            label=percentile,
            ratio=False,
        )
        for durability, p99_limit in (("write", 5.0), ("fsync", 25.0))
        for percentile in ("p50", "p99")
    ),
    *(
        Figure(
            f"batch_{durability}",
            f"LOG_METRICS {{batch:,}}/msg, {durability}",
            "metrics/s",
            "echo, same frames",
            True,
            Target(limit),
        )
        for durability, limit in (("write", 1_000_000), ("fsync", 500_000))
    ),
    Figure(
        "batch_at",
        "LOG_METRICS_AT {batch:,}/msg, write, best of {at_rounds}",
        "metrics/s",
        "LOG_METRICS, same run",
        True,
        Target(0.9, of_ratio=True),
    ),
    Figure(
        "logger_e2e",
        "MetricLogger end to end, {logger_points:,} points + close(), median of {logger_rounds}",
        "points/s",
        "LOG_METRICS 1,000/msg, same points",
        True,
        Target(0.75, of_ratio=True),
    ),
    Figure(
        "logger_log",
        "MetricLogger.log() median per call",
        "us",
        "list.append",
        False,
        Target(0.5),
    ),
    Figure(
        "logger_sync",
        "MetricLogger.log() + flush() one at a time, {logger_calls:,} calls",
        "calls/s",
        "websockets sync send+recv, echo",
        True,
        Target(0.8, of_ratio=True),
    ),
    Figure("streams", STREAM_ROW, "metrics/s", ECHO, True, row=STREAM_ROW),
    Figure(
        "streams_fairness",
        f"{STREAM_ROW}: fairness",
        "min/max",
        ECHO,
        True,
        row=STREAM_ROW,
        label="fairness",
        ratio=False,
    ),
    Figure(
        "paging_first",
        "QUERY paging {read_records:,} records, first pass",
        "records/s",
        PY_READ,
        True,
        Target(5_000_000),
    ),
    Figure(
        "paging_again",
        "QUERY paging {read_records:,} records, again",
        "records/s",
        PY_READ,
        True,
        Target(5_000_000),
    ),
    Figure(
        "columns",
        "Client.query_columns {read_records:,} points of one name, median of 3",
        "points/s",
        "QUERY paging, again",
        True,
        Target(5_000_000),
    ),
    Figure(
        "lttb",
        "LTTB {read_records:,} -> {lttb_points:,} points, median of {lttb_repeat}",
        "ms",
        "py read+parse+LTTB",
        False,
        Target(300),
    ),
    Figure(
        "latest",
        "latest value per name, {read_names} names, {read_records:,} records, first query",
        "ms",
        PY_READ,
        False,
    ),
    *(
        Figure(
            f"push_{percentile}",
            f"WATCH push {percentile}, {{watchers}} watchers",
            "ms",
            "echo round trip",
            False,
            row=PUSH_ROW,
            label=percentile,
            ratio=False,
        )
        for percentile in ("p50", "p99")
    ),
    Figure(
        "watched_ingest",
        "ingest with {watchers} watchers vs without",
        "metrics/s",
        "no watchers",
        True,
        Target(0.5, of_ratio=True),
    ),
    Figure(
        "watched_ingest_few",
        "ingest with {few_watchers} watchers vs without",
        "metrics/s",
        "no watchers",
        True,
        Target(0.9, of_ratio=True),
    ),
    Figure(
        "list_runs",
        "LIST_RUNS filtered page of {runs:,} runs, warm, median of 5",
        "ms",
        "py read+parse+filter",
        False,
        Target(200),
    ),
    Figure(
        "idle_rss",
        "RSS per idle connection, {idle_connections:,} connections",
        "bytes",
        ECHO,
        False,
        Target(25 * 1024),
    ),
    Figure(
        "idle_workers",
        "daemon CPU with {idle_workers} idle workers claiming, {worker_seconds:g} s after {worker_ramp_seconds:g} s",
        "%",
        "no workers",
        False,
        Target(1.0),
        ratio=False,
    ),
    *(
        Figure(
            f"cluster_push_{percentile}",
            f"cross-node WATCH push {percentile}, {{cluster_rate:,}} metrics/s",
            "ms",
            "same node",
            False,
            Target(200) if percentile == "p99" else None,
            row=CLUSTER_PUSH_ROW,
            label=percentile,
            ratio=False,
        )
        for percentile in ("p50", "p99")
    ),
    Figure(
        "cluster_ingest",
        "{cluster_nodes} nodes ingesting, one experiment each, LOG_METRICS {cluster_ingest_batch:,}/msg",
        "metrics/s",
        "1 node, same load",
        True,
        Target(0.9, of_ratio=True),
    ),
    Figure(
        "cluster_shared",
        "one experiment from {cluster_nodes} nodes at once, LOG_METRICS {cluster_ingest_batch:,}/msg",
        "metrics/s",
        "1 node, same load",
        True,
    ),
)
LARGE_ROW = "{figure} ({large_records:,} records beside {large_small:,} small)"
LARGE_BASELINE = "py+numpy read of the files"
CACHE_BYTES = 256 << 20
"""storage.cache_bytes of the --large daemon (the default)."""


def _large(key: str, figure: str, unit: str, limit: float | None, higher: bool = False) -> Figure:
    return Figure(
        f"large_{key}",
        LARGE_ROW.replace("{figure}", figure),
        unit,
        LARGE_BASELINE,
        higher,
        None if limit is None else Target(limit),
    )


LARGE_FIGURES: tuple[Figure, ...] = (
    _large("first_pass", "first pass (first query after start)", "records/s", 5_000_000, True),
    Figure(
        "large_first_pass_ack_p99",
        "LOG_METRIC ack p99 of another client during the first pass",
        "ms",
        "same load, daemon idle",
        False,
        Target(20),
        ratio=False,
    ),
    Figure(
        "large_first_pass_any_order",
        "first pass, ten names in random order ({any_order_records:,} records, in-process)",
        "records/s",
        "py+numpy read of the file",
        True,
        Target(5_000_000),
    ),
    _large("list_cold", "LIST_EXPERIMENTS cold", "ms", 1000),
    _large("list_warm", "LIST_EXPERIMENTS warm", "ms", 200),
    _large("get_cold", "GET_EXPERIMENT (count, latest per name) cold", "ms", 100),
    _large("get_warm", "GET_EXPERIMENT (count, latest per name) warm", "ms", 100),
    _large("latest_cold", "QUERY latest value per name (max_points 2) cold", "ms", 100),
    _large("latest_warm", "QUERY latest value per name (max_points 2) warm", "ms", 100),
    _large("lttb_cold", "QUERY one name, LTTB {lttb_points:,} points cold", "ms", 1000),
    _large("lttb_warm", "QUERY one name, LTTB {lttb_points:,} points warm", "ms", 300),
    _large("range_cold", "QUERY paging one name, {range_steps:,} steps cold", "ms", None),
    _large("range_warm", "QUERY paging one name, {range_steps:,} steps warm", "ms", None),
    Figure(
        "large_rss",
        "daemon VmRSS after the queries vs storage.cache_bytes + 200 MB",
        "bytes",
        "RSS before the first request",
        False,
        Target(CACHE_BYTES + (200 << 20)),
    ),
)
BY_KEY = {f.key: f for f in FIGURES + LARGE_FIGURES}


@dataclass(frozen=True)
class Row:
    """One measured figure: the daemon's value and the baseline's (None: not measured)."""

    figure: Figure
    value: float | None
    baseline: float | None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None without a target or a measurement."""
        target = self.figure.target
        measured = self.ratio if target and target.of_ratio else self.value
        if target is None or measured is None:
            return None
        return (
            measured >= target.limit if self.figure.higher_is_better else measured <= target.limit
        )

    def as_json(self) -> dict[str, Any]:
        return {"figure": self.figure.key, "value": self.value, "baseline": self.baseline}


def rows_from_json(rows: list[dict[str, Any]]) -> list[Row]:
    """Rows as written by Row.as_json (KeyError on an undeclared figure)."""
    return [Row(BY_KEY[r["figure"]], r["value"], r["baseline"]) for r in rows]


# -- text ------------------------------------------------------------------------------------


def number(value: float | None, unit: str = "") -> str:
    """Milli- and microseconds under 100 to three significant digits, min/max and percentages to two
    decimals, everything else whole, with thousands separators."""
    if value is None:
        return "n/a"
    if unit in ("min/max", "%"):
        return f"{value:.2f}"
    if unit in ("ms", "us") and abs(value) < 100:
        return f"{value:.3g}"
    return f"{value:,.0f}"


def ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "n/a"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:,.0f}x"


def target_text(figure: Figure) -> str:
    target = figure.target
    if target is None:
        return ""
    sign = ">=" if figure.higher_is_better else "<="
    limit = (
        f"{target.limit:g}x"
        if target.of_ratio
        else f"{target.limit:.3g}"
        if target.limit < 100
        else number(target.limit)
    )
    return f"{sign} {limit}"


def status(row: Row) -> str:
    met = row.met
    return "" if met is None else "PASS" if met else "MISS"


def console_table(rows: list[Row], sizes: dict[str, Any], mode: str) -> str:
    """The table scripts/bench prints: one line per figure."""
    header = ("figure", "unit", "fetchml", "baseline", "ratio", "baseline is", "target", "")
    lines = [header] + [
        (
            r.figure.name.format(**sizes),
            r.figure.unit,
            number(r.value, r.figure.unit),
            number(r.baseline, r.figure.unit),
            ratio_text(r.ratio) if r.figure.ratio else "",
            r.figure.baseline,
            target_text(r.figure),
            status(r),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [f"fetchml bench ({mode}); ratio = fetchml / baseline", ""]
    for line in lines:
        cells = [
            cell.rjust(width) if i in (2, 3, 4) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def markdown_table(rows: list[Row], sizes: dict[str, Any]) -> str:
    """The README's table: figures sharing a row are joined with " / "."""
    groups: list[list[Row]] = []
    for r in rows:
        if groups and r.figure.row and groups[-1][0].figure.row == r.figure.row:
            groups[-1].append(r)
        else:
            groups.append([r])
    lines = ["| figure | fetchml | baseline | ratio | target |", "|---|---|---|---|---|"]
    lines += [markdown_row(group, sizes) for group in groups]
    return "\n".join(lines)


def markdown_row(group: list[Row], sizes: dict[str, Any]) -> str:
    first = group[0].figure
    title = (first.row or first.name).format(**sizes)
    units = [first.unit] + [
        f"{r.figure.label} {r.figure.unit}" for r in group[1:] if r.figure.unit != first.unit
    ]
    values = " / ".join(number(r.value, r.figure.unit) for r in group)
    baselines = " / ".join(number(r.baseline, r.figure.unit) for r in group)
    ratios = " / ".join(ratio_text(r.ratio) for r in group if r.figure.ratio)
    targets = []
    for r in group:
        if r.figure.target is not None:
            label = f"{r.figure.label} " if len(group) > 1 else ""
            verdict = {True: "pass", False: "**miss**", None: "n/a"}[r.met]
            targets.append(f"{label}{target_text(r.figure)}: {verdict}")
    cells = [
        f"{title} ({'; '.join(units)})",
        values,
        f"{baselines} ({first.baseline})",
        ratios,
        "; ".join(targets),
    ]
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"
