"""Export the metrics of one or more runs to CSV, JSON lines or Parquet, page by page.

Columns: name, step, value, timestamp (in this order in every format, JSON lines
included), preceded by `run` (the run's 40-hex ID) when several runs go into one
file. CSV writes non-finite values as
nan / inf / -inf (pandas reads them back as floats); JSON lines use the
protocol's strings "NaN", "Infinity", "-Infinity". Parquet needs the
optional `pyarrow` package. The file is written beside the target and
renamed into place when complete.
"""

import csv
import io
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol, TextIO

from fetchml.protocol import shapes

from .columns import Columns, csv_values, json_values
from .connection import Client
from .errors import ConfigurationError
from .extras import load_optional
from .models import MAX_STEP, Metric

FORMATS = ("csv", "jsonl", "parquet")
COLUMNS = ("name", "step", "value", "timestamp")
RUN_COLUMN = "run"


class Writer(Protocol):
    def write(self, records: Sequence[Metric], run: str) -> None: ...

    def write_columns(self, name: str, columns: Columns, run: str) -> None:
        """The same as write() for the points of one name, without an object per point."""

    def close(self) -> None: ...


class CsvWriter:
    def __init__(self, path: Path, with_run: bool) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._lead: tuple[str, ...] = (RUN_COLUMN,) if with_run else ()
        self._csv.writerow(self._lead + COLUMNS)

    def write(self, records: Sequence[Metric], run: str) -> None:
        lead = (run,) if self._lead else ()
        self._csv.writerows((*lead, r.name, r.step, repr(r.value), r.timestamp) for r in records)

    def write_columns(self, name: str, columns: Columns, run: str) -> None:
        # The lead cells as the csv module quotes them, then numbers, which it never quotes.
        lead = io.StringIO()
        csv.writer(lead, self._csv.dialect).writerow((run, name) if self._lead else (name,))
        end = str(self._csv.dialect.lineterminator)
        head = lead.getvalue().removesuffix(end) + ","
        self._file.writelines(
            f"{head}{step},{value},{timestamp}{end}"
            for step, value, timestamp in zip(
                columns.step.tolist(),
                csv_values(columns.value),
                columns.timestamp.tolist(),
                strict=True,
            )
        )

    def close(self) -> None:
        self._file.close()


class JsonLinesWriter:
    def __init__(self, path: Path, with_run: bool) -> None:
        self._file = path.open("w", encoding="utf-8")
        self._with_run = with_run

    def write(self, records: Sequence[Metric], run: str) -> None:
        lead = {RUN_COLUMN: run} if self._with_run else {}
        for record in records:
            shape = shapes.metric(record)
            self._file.write(shapes.dumps(lead | {key: shape[key] for key in COLUMNS}) + "\n")

    def write_columns(self, name: str, columns: Columns, run: str) -> None:
        # The text shapes.dumps writes for write()'s dicts, put together directly.
        head = "{" + (f'"{RUN_COLUMN}":{shapes.dumps(run)},' if self._with_run else "")
        head += f'"name":{shapes.dumps(name)},"step":'
        self._file.writelines(
            f'{head}{step},"value":{value},"timestamp":{timestamp}}}\n'
            for step, value, timestamp in zip(
                columns.step.tolist(),
                json_values(columns.value),
                columns.timestamp.tolist(),
                strict=True,
            )
        )

    def close(self) -> None:
        self._file.close()


class ParquetWriter:
    def __init__(self, path: Path, with_run: bool) -> None:
        self._pa = load_optional("pyarrow", "parquet", "Parquet export")
        pq = load_optional("pyarrow.parquet", "parquet", "Parquet export")
        pa = self._pa
        self._with_run = with_run
        lead = [(RUN_COLUMN, pa.string())] if with_run else []
        self._schema = pa.schema(
            [
                *lead,
                ("name", pa.string()),
                ("step", pa.uint32()),
                ("value", pa.float64()),
                ("timestamp", pa.int64()),
            ]
        )
        self._writer = pq.ParquetWriter(str(path), self._schema)

    def write(self, records: Sequence[Metric], run: str) -> None:
        lead = {RUN_COLUMN: [run] * len(records)} if self._with_run else {}
        columns = lead | {
            "name": [r.name for r in records],
            "step": [r.step for r in records],
            "value": [r.value for r in records],
            "timestamp": [r.timestamp for r in records],
        }
        self._writer.write_table(self._pa.table(columns, schema=self._schema))

    def write_columns(self, name: str, columns: Columns, run: str) -> None:
        pa, n = self._pa, len(columns)
        lead = {RUN_COLUMN: pa.repeat(run, n)} if self._with_run else {}
        table = lead | {
            "name": pa.repeat(name, n),
            "step": columns.step,
            "value": columns.value,
            "timestamp": columns.timestamp,
        }
        self._writer.write_table(pa.table(table, schema=self._schema))

    def close(self) -> None:
        self._writer.close()


def open_writer(fmt: str, path: Path, with_run: bool = False) -> Writer:
    if fmt == "csv":
        return CsvWriter(path, with_run)
    if fmt == "jsonl":
        return JsonLinesWriter(path, with_run)
    if fmt == "parquet":
        return ParquetWriter(path, with_run)
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
    runs: Sequence[str],
    path: Path,
    fmt: str,
    *,
    name: str = "",
    step_from: int = 0,
    step_to: int = MAX_STEP,
    progress: ProgressBar | None = None,
    sizes: Sequence[int] = (),
) -> int:
    """Write every matching record of `runs` (40-hex IDs, in turn) to `path`, with a `run`
    column when there are several; returns how many. `sizes` (record counts) place each
    run on the progress bar."""
    partial = path.with_name(path.name + ".partial")
    writer = open_writer(fmt, partial, with_run=len(runs) > 1)
    count = base = 0
    try:
        for i, run in enumerate(runs):
            async for next_index, written in _pages(client, run, writer, name, step_from, step_to):
                count += written
                if progress is not None and next_index:
                    progress.update(base + next_index, count)
            base += sizes[i] if i < len(sizes) else 0
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, path)
    if progress is not None:
        progress.finish(count)
    return count


async def _pages(
    client: Client, run: str, writer: Writer, name: str, step_from: int, step_to: int
) -> AsyncIterator[tuple[int, int]]:
    """Write each page of `run`'s matching records: (next, records written) per page.
    One name goes by columns (query_column_pages), all names by records."""
    if name:
        pages = client.query_column_pages(run, name, start_step=step_from, end_step=step_to)
        async for next_index, columns in pages:
            writer.write_columns(name, columns, run)
            yield next_index, len(columns)
        return
    async for page in client.query_pages(run, step_from=step_from, step_to=step_to):
        writer.write(page.records, run)
        yield page.next, len(page.records)
