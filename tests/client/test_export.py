"""`fetchml export` to CSV, JSON lines and Parquet, read back with pandas and pyarrow."""

import asyncio
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from fetchml.client import Client, MetricLogger, cli
from tests.support.daemon import DaemonProcess
from tests.support.experiments import commit_of
from tests.support.keys import ADMIN_KEY

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")

C = commit_of("export")
SECOND = commit_of("export-second")
TOTAL = 90_000  # several query pages
SPECIAL = {7: math.nan, 8: math.inf, 9: -math.inf}


def expected_points() -> list[tuple[str, int, float]]:
    names = ("loss", "acc", "lr")
    return [(names[i % 3], i // 3, SPECIAL.get(i, i / 8)) for i in range(TOTAL)]


@pytest.fixture(scope="module")
def logged(shared_server: DaemonProcess) -> DaemonProcess:
    with MetricLogger(C, shared_server.url, ADMIN_KEY) as ml:
        for name, step, value in expected_points():
            ml.log(name, value, step=step)
    return shared_server


def export(
    server: DaemonProcess, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    code = cli.main(["--url", server.url, "--api-key", ADMIN_KEY, "export", C, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def check_frame(frame: Any, points: list[tuple[str, int, float]]) -> None:
    assert list(frame.columns) == ["name", "step", "value", "timestamp"]
    assert frame["name"].tolist() == [p[0] for p in points]
    assert frame["step"].tolist() == [p[1] for p in points]
    values = np.array([float(v) for v in frame["value"]])
    assert np.array_equal(values, np.array([p[2] for p in points]), equal_nan=True)
    assert (frame["timestamp"] > 1_700_000_000).all()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_reads_back_equal(
    fmt: str, logged: DaemonProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    path = tmp_path / f"metrics.{fmt}"
    code, out, err = export(logged, capsys, "--format", fmt, "-o", str(path), "--progress")
    assert code == 0, err
    assert out == f"wrote {TOTAL} records to {path}\n"
    assert "exporting [" in err and "100%" in err and err.endswith("\n")
    if fmt == "csv":
        frame = pd.read_csv(path)
    elif fmt == "jsonl":
        frame = pd.read_json(path, lines=True, dtype=False)
        assert frame["value"].iloc[7] == "NaN" and frame["value"].iloc[8] == "Infinity"
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        assert [str(t) for t in table.schema.types] == ["string", "uint32", "double", "int64"]
        frame = pd.read_parquet(path)
    check_frame(frame, expected_points())
    assert not path.with_name(path.name + ".partial").exists()


def test_export_filters_and_guesses_the_format(
    logged: DaemonProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lr.csv"
    code, out, err = export(
        logged, capsys, "-o", str(path), "--name", "lr", "--steps", "10:19", "--json"
    )
    assert code == 0, err
    assert err == ""  # no progress bar when stderr is not a terminal
    assert out == f'{{"records":10,"file":"{path}"}}\n'
    wanted = [p for p in expected_points() if p[0] == "lr" and 10 <= p[1] <= 19]
    check_frame(pd.read_csv(path), wanted)
    code, _, err = export(logged, capsys, "-o", str(tmp_path / "x.unknown"))
    assert code == 1 and err.startswith("error: cannot tell the format")


def test_parquet_without_pyarrow_is_a_clear_error(
    logged: DaemonProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    path = tmp_path / "m.parquet"
    code, out, err = export(logged, capsys, "-o", str(path))
    assert (code, out) == (1, "")
    assert (
        err
        == "error: Parquet export needs the optional pyarrow package: pip install 'fetchml[parquet]'\n"
    )
    assert not path.exists()


async def log_second(url: str) -> None:
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        if await c.create_experiment(SECOND, exist_ok=True):  # once per module
            points = [("lr", 0.5, 12), ("loss", 9.0, 12), ("lr", math.inf, 13)]
            await c.log_metrics(SECOND, points)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_of_several_runs_has_a_run_column(
    fmt: str, logged: DaemonProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    asyncio.run(log_second(logged.url))
    path = tmp_path / f"two.{fmt}"
    argv = (SECOND[:8], C, "--name", "lr", "--steps", "10:13", "-o", str(path), "--progress")
    code, out, err = export(logged, capsys, *argv)
    assert code == 0, err
    assert out == f"wrote 6 records to {path}\n" and "100%" in err
    if fmt == "csv":
        frame = pd.read_csv(path)
    elif fmt == "jsonl":
        frame = pd.read_json(path, lines=True, dtype=False)
    else:
        import pyarrow.parquet as pq

        types = [str(t) for t in pq.read_table(path).schema.types]
        assert types == ["string", "string", "uint32", "double", "int64"]
        frame = pd.read_parquet(path)
    assert frame["run"].tolist() == [C] * 4 + [SECOND] * 2  # in the order given
    mine = [p for p in expected_points() if p[0] == "lr" and 10 <= p[1] <= 13]
    check_frame(frame.drop(columns="run"), [*mine, ("lr", 12, 0.5), ("lr", 13, math.inf)])
