"""Client.query_columns: one metric's points as numpy columns, equal to Client.query's
records, and the CLI's export and query of one name printed from them byte for byte."""

import asyncio
import contextlib
import math
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from websockets.asyncio.server import ServerConnection, serve

from fetchml.client import (
    Client,
    Columns,
    ConfigurationError,
    InvalidRequest,
    NotFound,
    ProtocolViolation,
    cli,
)
from fetchml.client.columns import decode_page
from fetchml.client.export import open_writer
from fetchml.client.metrics import MetricsAPI
from fetchml.client.models import Metric
from fetchml.client.output import metric_json, metrics_table
from fetchml.protocol.metrics import encode_metrics_payload, encode_record, metrics_packet
from tests.support.daemon import DaemonProcess, daemon_at
from tests.support.experiments import STAMP, commit_of, make_experiment
from tests.support.keys import ADMIN_KEY

C = commit_of("columns")
SECOND = commit_of("columns-second")
MISSING = commit_of("columns-missing")
NAMES = ("loss", "acc", 'grad,"ünï"/code')  # the last one quoted in CSV, escaped in JSON
PER_NAME = 6_000  # a "loss" page holds about 5,200 records at the daemon's 128 KiB
SPECIAL = (math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e308, -1.5, 0.1)
PAGE_BYTES = 128 << 10


def value(i: int) -> float:
    return SPECIAL[i // 3] if i < 3 * len(SPECIAL) else math.sin(i) * 10 ** (i % 7 - 3)


def metrics_file(count: int) -> bytes:
    """The names in turn, three records per step, timestamps advancing every 7 records."""
    return b"".join(
        encode_record(STAMP + i // 7, i // 3, value(i), NAMES[i % 3].encode()) for i in range(count)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon with small pages, over a run of three names and a second, shorter run."""
    home = tmp_path_factory.mktemp("columns")
    proc = daemon_at(home, server={"max_message_bytes": PAGE_BYTES})
    (home / "experiments").mkdir(exist_ok=True)
    make_experiment(home / "experiments", C, metrics_file(3 * PER_NAME))
    make_experiment(home / "experiments", SECOND, metrics_file(300))
    proc.start()
    yield proc
    proc.close()


def bits(values: "npt.ArrayLike") -> list[int]:
    """The values' bit patterns: NaN, -0.0 and 0.0 compared exactly."""
    return [int(b) for b in np.asarray(values, np.float64).view(np.uint64)]


def assert_equal(columns: Columns, records: list[Metric]) -> None:
    dtypes = (columns.step.dtype.name, columns.value.dtype.name, columns.timestamp.dtype.name)
    assert dtypes == ("uint32", "float64", "int64")
    assert len(columns) == len(records)
    assert columns.step.tolist() == [r.step for r in records]
    assert bits(columns.value) == bits([r.value for r in records])
    assert columns.timestamp.tolist() == [r.timestamp for r in records]


async def test_columns_equal_the_records_of_query(server: DaemonProcess) -> None:
    async with Client.connect(server.url, ADMIN_KEY) as client:
        for name in NAMES:
            columns = await client.query_columns(C, name)
            records = await client.query(C, name=name)
            assert len(columns) == PER_NAME  # several pages
            assert_equal(columns, records)
        loss = await client.query_columns(C, "loss")
    assert bits(loss.value[: len(SPECIAL)]) == bits(SPECIAL)  # NaN, inf, -inf, -0.0...
    assert loss.timestamp[0] == STAMP and loss.timestamp[-1] == STAMP + (3 * PER_NAME - 3) // 7


async def test_step_ranges(server: DaemonProcess) -> None:
    ranges = [(100, 200), (0, 0), (PER_NAME - 1, None), (None, 10), (4_000, None), (7, 6)]
    async with Client.connect(server.url, ADMIN_KEY) as client:
        for start, end in ranges:
            columns = await client.query_columns(C, "acc", start_step=start, end_step=end)
            step_from, step_to = start or 0, 0xFFFFFFFF if end is None else end
            records = await client.query(C, name="acc", step_from=step_from, step_to=step_to)
            assert_equal(columns, records)
            assert len(columns) == max(0, min(step_to, PER_NAME - 1) - step_from + 1)


async def test_max_points_are_the_lttb_points_of_query(server: DaemonProcess) -> None:
    async with Client.connect(server.url, ADMIN_KEY) as client:
        for points, start in ((100, None), (2, None), (50, 1_000), (10_000, 5_900)):
            columns = await client.query_columns(C, "loss", start_step=start, max_points=points)
            records = await client.query(C, name="loss", step_from=start or 0, max_points=points)
            assert_equal(columns, records)
            assert len(columns) == min(points, PER_NAME - (start or 0))


async def test_an_empty_series_and_a_missing_name(server: DaemonProcess) -> None:
    async with Client.connect(server.url, ADMIN_KEY) as client:
        empty = [
            await client.query_columns(C, "nothing-logged"),
            await client.query_columns(C, "loss", start_step=PER_NAME),
            await client.query_columns(C, "lost"),  # the length of "loss"
            await client.query_columns(C, "nothing-logged", max_points=10),
        ]
        for columns in empty:
            assert_equal(columns, [])
        with pytest.raises(NotFound):
            await client.query_columns(MISSING, "loss")
        with pytest.raises(InvalidRequest, match="name"):
            await client.query_columns(C, "")  # every name: query() does that
        with pytest.raises(InvalidRequest, match="step"):
            await client.query_columns(C, "loss", end_step=1 << 32)
        assert await client.query_columns(C, "acc", end_step=3) is not None  # still connected


def page(records: bytes, count: int, next_index: int = 0) -> bytes:
    return encode_metrics_payload(next_index, count, records)


def test_decode_page_reads_the_records_in_place() -> None:
    records = b"".join(
        encode_record(STAMP + i, i, -0.0 if i else math.nan, b"loss") for i in (0, 1)
    )
    next_index, decoded = decode_page(page(records, 2, 17), b"loss")
    columns = Columns.of([decoded])
    assert next_index == 17
    assert columns.step.tolist() == [0, 1] and columns.timestamp.tolist() == [STAMP, STAMP + 1]
    assert bits(columns.value) == bits([math.nan, -0.0])


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (page(encode_record(STAMP, 1, 1.0, b"loss") * 3, 2), "says 2 records .* holds 75 bytes"),
        (page(encode_record(STAMP, 1, 1.0, b"loss") * 2, 3), "says 3 records .* holds 50 bytes"),
        (page(encode_record(STAMP, 1, 1.0, b"loss")[:-1], 1), "says 1 records"),
        (
            page(encode_record(STAMP, 1, 1.0, b"loss") + encode_record(STAMP, 2, 2.0, b"lost"), 2),
            "not named",
        ),
        (
            page(encode_record(STAMP, 1, 1.0, b"abc") + encode_record(STAMP, 2, 2.0, b"defgh"), 2),
            "not named",
        ),
        (page(encode_record(STAMP, 1, 1.0, b"lo\0s"), 1), "not named"),
        (page(encode_record(STAMP, 1, 1.0, b"los") + b"\x02", 1), "not named"),
        (b"\0" * 11, "too short"),
    ],
)
def test_a_page_that_does_not_match_is_refused(payload: bytes, error: str) -> None:
    with pytest.raises(ProtocolViolation, match=error):
        decode_page(payload, b"loss")


@contextlib.asynccontextmanager
async def answering(pages: list[tuple[int, int, bytes]]) -> AsyncIterator[str]:
    """A websockets server that answers each request with the next hand-made DATA
    `metrics` page (next, count, records): a daemon that breaks the protocol."""

    async def handler(ws: ServerConnection) -> None:
        async for _ in ws:
            next_index, count, records = pages.pop(0)
            await ws.send(metrics_packet(STAMP, next_index, count, records))

    async with serve(handler, "127.0.0.1", 0) as listening:
        port = next(iter(listening.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws"


async def test_a_page_that_breaks_the_protocol_raises_through_the_client() -> None:
    loss = encode_record(STAMP, 1, 1.0, b"loss")
    pages = [
        (5, 1, loss),
        (5, 1, loss),
        (9, 2, loss),
        (0, 1, encode_record(STAMP, 1, 1.0, b"lost")),
    ]
    async with answering(pages) as url, Client.connect(url, ADMIN_KEY) as client:
        with pytest.raises(ProtocolViolation, match="did not advance past record 5"):
            await client.query_columns(C, "loss")
        with pytest.raises(ProtocolViolation, match="says 2 records"):
            await client.query_columns(C, "loss")
        with pytest.raises(ProtocolViolation, match="not named 'loss'"):
            await client.query_columns(C, "loss", max_points=10)
    assert pages == []


async def test_to_pandas(server: DaemonProcess) -> None:
    pytest.importorskip("pandas")
    async with Client.connect(server.url, ADMIN_KEY) as client:
        columns = await client.query_columns(C, "acc", end_step=99)
        empty = await client.query_columns(C, "acc", start_step=PER_NAME)
    frame = columns.to_pandas()
    assert list(frame.columns) == ["step", "value", "timestamp"]
    assert [str(t) for t in frame.dtypes] == ["uint32", "float64", "int64"]
    assert frame["step"].tolist() == list(range(100))
    assert bits(frame["value"].to_numpy()) == bits(columns.value)
    assert frame["timestamp"].tolist() == columns.timestamp.tolist()
    assert list(empty.to_pandas().columns) == ["step", "value", "timestamp"]
    assert len(empty.to_pandas()) == 0


def test_to_pandas_without_pandas_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    empty = Columns(np.empty(0, np.uint32), np.empty(0, np.float64), np.empty(0, np.int64))
    with pytest.raises(ConfigurationError, match=r"pip install 'fetchml\[pandas\]'"):
        empty.to_pandas()


# -- the CLI: the same bytes as the records path, without it -----------------------------------


async def records_export(
    server: DaemonProcess, runs: list[str], name: str, path: Path, fmt: str
) -> None:
    """What `fetchml export --name NAME --steps 3:` wrote from records, page by page."""
    writer = open_writer(fmt, path, with_run=len(runs) > 1)
    async with Client.connect(server.url, ADMIN_KEY) as client:
        for run in runs:
            async for records in client.query_pages(run, name=name, step_from=3):
                writer.write(records.records, run)
    writer.close()


def without_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, reading one name through records fails the test."""

    async def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("one name read as records")

    monkeypatch.setattr(MetricsAPI, "query_pages", refused)
    monkeypatch.setattr(MetricsAPI, "query", refused)
    monkeypatch.setattr(MetricsAPI, "query_page", refused)


def run_cli(server: DaemonProcess, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = cli.main(["--url", server.url, "--api-key", ADMIN_KEY, *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize(("runs", "name"), [([C], "loss"), ([C, SECOND], NAMES[2])])
def test_cli_export_of_one_name_is_byte_identical(
    fmt: str,
    runs: list[str],
    name: str,
    server: DaemonProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    reference, path = tmp_path / f"records.{fmt}", tmp_path / f"columns.{fmt}"
    asyncio.run(records_export(server, runs, name, reference, fmt))
    without_records(monkeypatch)
    argv = ["export", *runs, "--name", name, "--steps", "3:", "-o", str(path), "--no-progress"]
    assert (
        run_cli(server, capsys, *argv)
        == f"wrote {PER_NAME - 3 + 97 * (len(runs) - 1)} records to {path}\n"
    )
    assert path.read_bytes() == reference.read_bytes()
    if fmt == "csv" and name == NAMES[2]:
        assert '"grad,""ünï""/code"'.encode() in path.read_bytes()  # quoted as csv quotes it


async def records_query(server: DaemonProcess, name: str, points: int) -> list[Metric]:
    async with Client.connect(server.url, ADMIN_KEY) as client:
        return await client.query(C, name=name, step_from=2, max_points=points)


@pytest.mark.parametrize("points", [0, 40])
@pytest.mark.parametrize("name", ["loss", NAMES[2], "nothing-logged"])
def test_cli_query_of_one_name_is_byte_identical(
    name: str,
    points: int,
    server: DaemonProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = asyncio.run(records_query(server, name, points))
    as_json = "[" + ",\n".join(metric_json(r) for r in records) + "]\n"
    as_table = (metrics_table(records) if records else "(no matching metrics)") + "\n"
    without_records(monkeypatch)
    argv = [
        "query",
        C,
        "--name",
        name,
        "--steps",
        "2:",
        *(["--points", str(points)] if points else []),
    ]
    assert run_cli(server, capsys, *argv, "--json") == as_json
    assert run_cli(server, capsys, *argv) == as_table
    assert len(records) == (
        0 if name == "nothing-logged" else min(points or PER_NAME, PER_NAME - 2)
    )
