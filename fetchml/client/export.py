"""Export an experiment's metrics to CSV, JSON lines or Parquet, page by page.

Columns: name, step, value, timestamp (in this order in every format, JSON lines
included). CSV writes non-finite values as
nan / inf / -inf (pandas reads them back as floats); JSON lines use the
protocol's strings "NaN", "Infinity", "-Infinity". Parquet needs the
optional `pyarrow` package. The file is written beside the target and
renamed into place when complete.
"""

import csv
import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from fetchml.protocol import shapes

from .connection import Client
from .errors import ConfigurationError
from .models import MAX_STEP, Metric

FORMATS = ("csv", "jsonl", "parquet")
COLUMNS = ("name", "step", "value", "timestamp")


class Writer(Protocol):
    def write(self, records: Sequence[Metric]) -> None: ...

    def close(self) -> None: ...


class CsvWriter:
    def __init__(self, path: Path) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow(COLUMNS)

    def write(self, records: Sequence[Metric]) -> None:
        self._csv.writerows((r.name, r.step, repr(r.value), r.timestamp) for r in records)

    def close(self) -> None:
        self._file.close()


class JsonLinesWriter:
    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="utf-8")

    def write(self, records: Sequence[Metric]) -> None:
        for record in records:
            shape = shapes.metric(record)
            self._file.write(shapes.dumps({key: shape[key] for key in COLUMNS}) + "\n")

    def close(self) -> None:
        self._file.close()


def load_optional(module: str, extra: str, feature: str) -> Any:
    """Import an optional dependency, or explain which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigurationError(
            f"{feature} needs the optional {module} package: pip install 'fetchml[{extra}]'"
        ) from None


class ParquetWriter:
    def __init__(self, path: Path) -> None:
        self._pa = load_optional("pyarrow", "parquet", "Parquet export")
        pq = load_optional("pyarrow.parquet", "parquet", "Parquet export")
        pa = self._pa
        self._schema = pa.schema(
            [
                ("name", pa.string()),
                ("step", pa.uint32()),
                ("value", pa.float64()),
                ("timestamp", pa.int64()),
            ]
        )
        self._writer = pq.ParquetWriter(str(path), self._schema)

    def write(self, records: Sequence[Metric]) -> None:
        columns = {
            "name": [r.name for r in records],
            "step": [r.step for r in records],
            "value": [r.value for r in records],
            "timestamp": [r.timestamp for r in records],
        }
        self._writer.write_table(self._pa.table(columns, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


def open_writer(fmt: str, path: Path) -> Writer:
    if fmt == "csv":
        return CsvWriter(path)
    if fmt == "jsonl":
        return JsonLinesWriter(path)
    if fmt == "parquet":
        return ParquetWriter(path)
    raise ConfigurationError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")


def guess_format(path: Path) -> str | None:
    suffix = path.suffix.lower().lstrip(".")
    return {
        "csv": "csv",
        "jsonl": "jsonl",
        "ndjson": "jsonl",
        "parquet": "parquet",
        "pq": "parquet",
    }.get(suffix)


class ProgressBar:
    """`exporting [#####.....] 52% 520000 records` on a stream, redrawn when the percentage moves."""

    WIDTH = 30

    def __init__(self, stream: TextIO, total: int) -> None:
        self._stream = stream
        self._total = max(total, 1)
        self._shown = -1

    def update(self, position: int, records: int) -> None:
        percent = min(100, position * 100 // self._total)
        if percent == self._shown:
            return
        self._shown = percent
        filled = self.WIDTH * percent // 100
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self._stream.write(f"\rexporting [{bar}] {percent:3d}% {records} records")
        self._stream.flush()

    def finish(self, records: int) -> None:
        self._shown = -1
        self.update(self._total, records)
        self._stream.write("\n")
        self._stream.flush()


async def export_metrics(
    client: Client,
    commit: str,
    path: Path,
    fmt: str,
    *,
    name: str = "",
    step_from: int = 0,
    step_to: int = MAX_STEP,
    progress: ProgressBar | None = None,
) -> int:
    """Write every matching record to `path`; returns how many."""
    partial = path.with_name(path.name + ".partial")
    writer = open_writer(fmt, partial)
    count = 0
    try:
        async for page in client.query_pages(
            commit, name=name, step_from=step_from, step_to=step_to
        ):
            writer.write(page.records)
            count += len(page.records)
            if progress is not None and page.next:
                progress.update(page.next, count)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, path)
    if progress is not None:
        progress.finish(count)
    return count
