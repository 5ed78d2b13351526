"""`fetchml runs`, `show`, `compare`, `tag` and `note` on run documents, against a daemon."""

import asyncio
import math
import re
import sys
from collections.abc import Iterator

import pytest

from fetchml.client import Client, cli, compare
from fetchml.client.output import fmt_duration
from fetchml.client.runcmds import filter_value
from tests.support.cli import Cli
from tests.support.daemon import DaemonProcess, daemon_at
from tests.support.experiments import make_experiment, meta_bytes, record
from tests.support.keys import ADMIN_KEY, ALICE_KEY

SWEEP = {"5eed00" + d * 34: lr for d, lr in (("1", 0.1), ("2", 0.01), ("3", 0.001))}
R1, R2, R3 = SWEEP
PROBE = "a11ce0" + "4" * 34  # alice's, project "other", still running
TAGGED = "7a9900" + "6" * 34
LEGACY = "1e9ac7" + "5" * 34  # made the old way: no run document, an old meta.bin
CROWD = ["abcdef" + f"{i:034x}" for i in range(21)]  # one prefix, 21 experiments
TOTAL = len(SWEEP) + 3 + len(CROWD)
GIT = "0123456789abcdef0123456789abcdef01234567"
HEADERS = ["ID", "NAME", "PROJECT", "STATUS", "USER", "STARTED", "DURATION"]
WHEN = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


async def populate(url: str) -> None:
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        for i, (run, lr) in enumerate(SWEEP.items()):
            await c.create_experiment(run, f"lr-{lr}")
            doc = {
                "name": f"lr-{lr}",
                "project": "sweep",
                "params": {"lr": lr, "batch": 32, "opt": "adam"},
                "tags": ["sweep", "best"] if i == 1 else ["sweep"],
                "status": "running",
                "git_commit": GIT,
                "host": "gpu1",
                "pid": 4242,
            }
            await c.update_run(run, doc)
            points = [("loss", lr * (10 - step), step) for step in range(10)]
            points += [("acc", math.nan, 0)] if i == 1 else []
            points += [("acc", 0.5 + i / 10, 9)] if i < 2 else []
            await c.log_metrics(run, points)
            await c.update_run(run, {"status": "finished"})
        await c.create_experiment(TAGGED, "tagged")
        await c.update_run(TAGGED, {"name": "tagged", "tags": ["old", "keep"]})
        await asyncio.gather(*(c.create_experiment(cid) for cid in CROWD))
    async with Client.connect(url, api_key=ALICE_KEY) as c:
        await c.create_experiment(PROBE)
        output = "\n".join(f"line {i}" for i in range(25))
        doc = {
            "name": "alice-probe",
            "project": "other",
            "params": {"lr": 0.1, "batch": 64},
            "status": "running",
            "notes": "first line\nsecond line",
            "output": output,
        }
        await c.update_run(PROBE, doc)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home = tmp_path_factory.mktemp("lab")
    proc = daemon_at(home)
    old = meta_bytes(LEGACY, timestamp=1764000000)  # older than every run
    make_experiment(home / "experiments", LEGACY, record(0, "loss", 2.5), old)
    proc.start()
    asyncio.run(populate(proc.url))
    yield proc
    proc.close()


@pytest.fixture
def run(lab: DaemonProcess, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(lab, capsys)


def cells(text: str) -> list[list[str]]:
    """A table's rows, split on the two-space column gaps."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


def names(text: str) -> list[str]:
    return [row[1] for row in cells(text)[1:]]


async def run_doc(url: str, run_id: str) -> dict[str, object]:
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        page = await c.list_runs_page({"id": run_id})
    doc = page.runs[0].run
    assert doc is not None
    return doc.to_json()


def test_help_of_the_run_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("runs", "compare", "tag", "note"):
        assert cli.main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "example:" in out and f"fetchml {name}" in out, name


def test_filter_values_are_json_first_else_text() -> None:
    assert filter_value("0.1") == 0.1 and filter_value("32") == 32
    assert filter_value("true") is True and filter_value('"0.1"') == "0.1"
    for text in ("adam", "NaN", "Infinity", "1e400", "null", "[1]", '{"a":1}', ""):
        assert filter_value(text) == text, text


def test_durations() -> None:
    assert [fmt_duration(s) for s in (None, 0, 42, 185, 7380, 3 * 86400 + 7 * 3600)] == [
        "-",
        "0s",
        "42s",
        "3m05s",
        "2h03m",
        "3d07h",
    ]


def test_runs_table_with_param_columns_and_the_latest_metric(run: Cli) -> None:
    text = run.ok("runs", "--project", "sweep", "--param-cols", "lr,batch", "--metric", "loss")
    rows = cells(text)
    assert rows[0] == [*HEADERS, "lr", "batch", "loss"]
    by_name = {row[1]: row for row in rows[1:]}
    assert sorted(by_name) == ["lr-0.001", "lr-0.01", "lr-0.1"]
    for run_id, lr in SWEEP.items():
        row = by_name[f"lr-{lr}"]
        assert row[:5] == [run_id[:8], f"lr-{lr}", "sweep", "finished", "admin"]
        assert re.fullmatch(WHEN, row[5]) and re.fullmatch(r"\d+s", row[6]), row
        assert row[7:] == [str(lr), "32", str(lr)]  # the last loss is lr * 1


def test_runs_filters(run: Cli) -> None:
    def listed(*argv: str) -> list[str]:
        return sorted(names(run.ok("runs", *argv)))

    assert listed("--user", "alice") == ["alice-probe"]
    assert listed("--status", "running") == ["alice-probe"]
    assert listed("--tag", "best") == ["lr-0.01"]
    assert listed("--param", "lr=0.1") == ["alice-probe", "lr-0.1"]
    assert listed("--param", "lr=0.1", "--param", "batch=64") == ["alice-probe"]
    assert listed("--param", "opt=adam", "--name", "lr-0.0") == ["lr-0.001", "lr-0.01"]
    assert run.ok("runs", "--param", 'lr="0.1"') == "(no matching runs)\n"  # a string is not 0.1
    assert listed("--name", "tag") == ["tagged"]
    assert run.ok("runs", "--project", "sweep", "--oldest", "--ids") == f"{R1}\n{R2}\n{R3}\n"
    assert run.ok("runs", "--project", "nothing", "--ids") == ""


def test_runs_order_limit_and_runs_without_a_document(run: Cli) -> None:
    text = run.ok("runs", "--oldest", "--limit", "1")
    assert cells(text) == [
        HEADERS,
        [LEGACY[:8], "job", "-", "-", "admin", "-", "-"],
        [f"1 of {TOTAL} runs shown (--limit for more)"],
    ]
    newest = cells(run.ok("runs", "--limit", "1000", "--param-cols", "lr", "--metric", "loss"))
    legacy = [LEGACY[:8], "job", "-", "-", "admin", "-", "-", "-", "2.5"]
    assert len(newest) == 1 + TOTAL and newest[-1] == legacy


def test_runs_json(run: Cli) -> None:
    items = run.json("runs", "--project", "sweep", "--oldest", "--metric", "acc")
    assert isinstance(items, list) and [i["id"] for i in items] == [R1, R2, R3]
    meta = items[0]["metadata"]
    assert isinstance(meta.pop("timestamp"), int)
    assert meta == {"commit_id": R1, "job_name": "lr-0.1", "user": "admin"}
    assert items[0]["run"]["params"] == {"lr": 0.1, "batch": 32, "opt": "adam"}
    assert items[0]["metrics_count"] == 11
    assert [i["latest"] and i["latest"]["value"] for i in items] == [0.5, 0.6, None]
    legacy = run.json("runs", "--name", "job")
    assert legacy == [
        {
            "id": LEGACY,
            "metrics_count": 1,
            "metadata": {
                "commit_id": LEGACY,
                "timestamp": 1764000000,
                "job_name": "job",
                "user": "admin",
            },
            "run": None,
        }
    ]


def test_runs_bad_options(run: Cli) -> None:
    for argv, why in (
        (("--param", "lr"), "expected KEY=VALUE, got 'lr'"),
        (("--status", "done"), "invalid choice: 'done'"),
        (("--limit", "0"), "expected a positive integer"),
    ):
        code, out, err = run("runs", *argv)
        assert (code, out) == (2, "") and why in err, argv
    code, out, err = run("runs", "--tag", "")
    assert (code, out) == (1, "") and err.startswith("error: tag: "), err


def test_prefixes_resolve_through_the_run_listing(run: Cli) -> None:
    assert f"commit   {R1}" in run.ok("show", "5eed001")
    assert f"commit   {LEGACY}" in run.ok("show", "1e9ac7")  # old experiments as before
    listed = ", ".join(f"{r} (lr-{lr})" for r, lr in SWEEP.items())
    code, out, err = run("show", "5eed00")
    assert (code, out, err) == (1, "", f"error: commit prefix 5eed00 is ambiguous: {listed}\n")
    code, out, err = run("tag", "5eed00", "+x")
    assert (code, out, err) == (1, "", f"error: run prefix 5eed00 is ambiguous: {listed}\n")
    code, out, err = run("note", "abcdef", "x")
    named = re.fullmatch(r"error: run prefix abcdef is ambiguous: (.*) and 1 more\n", err)
    assert (code, out) == (1, "") and named, err
    shown = named.group(1).split(", ")  # the first page of 20, newest first, named sorted
    assert shown == sorted(shown) and len(set(shown) & set(CROWD)) == 20
    code, out, err = run("compare", R1[:8], "ba5eba11")
    assert (code, out, err) == (1, "", "error: no experiment matches run prefix ba5eba11\n")
    missing = "ba5eba11" * 5
    code, out, err = run("tag", missing, "+x")
    assert (code, out, err) == (1, "", f"error: experiment {missing} not found\n")


def test_show_prints_the_run_document(run: Cli) -> None:
    text = run.ok("show", "a11ce0")
    head, body = text.split("\n\n", 1)
    assert head.splitlines()[5:] == [
        "name     alice-probe",
        "project  other",
        "status   running",
        "git      -",
        "host     -",
        f"started  {head.splitlines()[10][9:]}",
        "ended    -",
        f"duration {head.splitlines()[12][9:]}",
        "tags     -",
        "notes    first line",
        "         second line",
        "params",
        "  batch  64",
        "  lr     0.1",
    ]
    assert re.fullmatch(WHEN, head.splitlines()[10][9:])
    assert (
        body
        == "(no metrics)\n\n"
        + "\n".join(["output (last 20 of 25 lines)", *(f"  line {i}" for i in range(5, 25))])
        + "\n"
    )
    lines = run.ok("show", R2).splitlines()
    assert "git      " + GIT in lines and "host     gpu1 (pid 4242)" in lines
    assert "status   finished" in lines and "tags     sweep, best" in lines
    assert any(re.fullmatch(f"ended    {WHEN}", line) for line in lines)
    shown = run.json("show", "a11ce0")
    assert isinstance(shown, dict) and shown["run"]["notes"] == "first line\nsecond line"
    legacy = run.ok("show", LEGACY)
    assert "name " not in legacy and legacy.splitlines()[:2] == [
        f"commit   {LEGACY}",
        "job      job",
    ]
    assert run.json("show", LEGACY)["run"] is None  # type: ignore[index]


def test_compare_marks_differing_params_and_summarises_metrics(run: Cli) -> None:
    text = run.ok("compare", R1, R2[:8], "5eed003")
    params, metrics = text.split("\n\n")
    marked = [(line[:2], line[2:].split()) for line in params.splitlines()]
    assert marked == [
        ("  ", ["PARAM", "lr-0.1", "lr-0.01", "lr-0.001"]),
        ("  ", ["id", R1[:8], R2[:8], R3[:8]]),
        ("  ", ["batch", "32", "32", "32"]),
        ("* ", ["lr", "0.1", "0.01", "0.001"]),
        ("  ", ["opt", "adam", "adam", "adam"]),
    ]
    assert [line.split() for line in metrics.splitlines()] == [
        ["METRIC", "STAT", "lr-0.1", "lr-0.01", "lr-0.001"],
        ["acc", "last", "0.5", "0.6", "-"],
        ["min", "0.5", "0.6", "-"],  # the NaN logged first is neither
        ["max", "0.5", "0.6", "-"],
        ["loss", "last", "0.1", "0.01", "0.001"],
        ["min", "0.1", "0.01", "0.001"],
        ["max", "1", "0.1", "0.01"],
    ]
    by_filter = run.ok("compare", "--project", "sweep", "--oldest")
    assert by_filter == text
    mixed = run.ok("compare", R1, LEGACY)
    assert mixed.splitlines()[0].split() == ["PARAM", "lr-0.1", "job"]
    assert "* lr" in mixed and "* batch" in mixed and "  id" in mixed


def test_compare_json_and_terminal_and_large_runs(
    run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run.json("compare", "--name", "lr-", "--oldest")
    assert isinstance(out, dict) and out["differing_params"] == ["lr"]
    assert [r["name"] for r in out["runs"]] == ["lr-0.1", "lr-0.01", "lr-0.001"]
    assert out["runs"][2] == {
        "id": R3,
        "name": "lr-0.001",
        "params": {"lr": 0.001, "batch": 32, "opt": "adam"},
        "metrics": {"loss": {"last": 0.001, "step": 9, "min": 0.001, "max": 0.01}},
        "exact": True,
    }
    plain = run.ok("compare", R1, R2).splitlines()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    lines = run.ok("compare", R1, R2).splitlines()
    assert plain[3].startswith("* lr ") and plain[2].startswith("  batch ")
    assert lines[3] == compare.BOLD + plain[3][2:] + compare.PLAIN
    assert lines[2] == plain[2][2:]
    monkeypatch.setattr(compare, "COMPARE_FULL_MAX", 10)  # R1 (11 records) is downsampled
    text = run.ok("compare", R1, R3)
    assert ["max", "~1", "0.01"] in [line.split() for line in text.splitlines()]
    assert text.endswith(
        f"~ min and max of runs over 10 records come from {compare.COMPARE_POINTS} "
        "downsampled points per metric\n"
    )
    code, out_, err = run("compare")
    assert (code, out_) == (1, "") and err.startswith("error: nothing to compare")


def test_tag_adds_and_removes_and_note_replaces(run: Cli, lab: DaemonProcess) -> None:
    assert run.ok("tag", "7a9900", "+best", "-old") == f"{TAGGED[:8]} tagged: tags keep, best\n"
    assert asyncio.run(run_doc(lab.url, TAGGED))["tags"] == ["keep", "best"]
    assert run.ok("tag", TAGGED) == f"{TAGGED[:8]} tagged: tags keep, best\n"
    assert run.json("tag", "7a9900", "-best", "+old") == {"id": TAGGED, "tags": ["keep", "old"]}
    assert run.json("tag", TAGGED, "+x", "+x") == {"id": TAGGED, "tags": ["keep", "old", "x"]}
    assert run.ok("tag", TAGGED, "-x", "-gone") == f"{TAGGED[:8]} tagged: tags keep, old\n"
    for argv, why in (
        (("best",), "expected +TAG or -TAG, got 'best'"),
        (("+x", "-x"), "tag 'x' both added and removed"),
        (("--bogus",), "unrecognized arguments: --bogus"),
    ):
        code, out, err = run("tag", TAGGED, *argv)
        assert (code, out) == (2, "") and why in err, argv
    code, out, err = run("tag", TAGGED, "+" + "x" * 65)
    assert (code, out) == (1, "") and err.startswith("error: tags"), err
    assert asyncio.run(run_doc(lab.url, TAGGED))["tags"] == ["keep", "old"]
    code, _, err = run("ls", "--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err

    assert run.ok("note", "7a9900", "lr too high") == f"{TAGGED[:8]} tagged: notes set\n"
    assert "notes    lr too high" in run.ok("show", TAGGED).splitlines()
    assert run.json("note", TAGGED, "") == {"id": TAGGED, "notes": ""}
    assert asyncio.run(run_doc(lab.url, TAGGED))["notes"] == ""
