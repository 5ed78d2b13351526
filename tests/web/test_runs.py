"""The runs table, charts, compare view and run page against runs logged through the
client; the page's requests stay on its origin under its CSP."""

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains

from fetchml.client.connection import Client
from fetchml.protocol.records import Metadata, encode_metadata
from tests.support.browser import Page, make_run, new_id, run
from tests.support.daemon import DaemonProcess
from tests.support.experiments import make_experiment
from tests.support.keys import ADMIN_KEY, BOB_KEY

GIT = "0123456789abcdef0123456789abcdef01234567"


def losses(scale: float, steps: int = 40) -> list[tuple[str, float, int]]:
    return [("loss", scale / (step + 1), step) for step in range(steps)] + [
        ("acc", 1 - scale / (step + 1), step) for step in range(0, steps, 4)
    ]


@dataclass
class Lab:
    a: str
    b: str
    c: str
    legacy: str
    project: str


@pytest.fixture(scope="module")
def lab(dashd: DaemonProcess) -> Lab:
    """Three runs in two projects (one of bob's) and an experiment without a run document."""
    project = "vision-" + new_id()[:6]
    url = dashd.url
    a = run(
        make_run(
            url,
            ADMIN_KEY,
            name="resnet-a",
            doc={
                "project": project,
                "tags": ["baseline"],
                "params": {"lr": 0.1, "opt": "adam", "layers": 50},
                "status": "finished",
                "git_commit": GIT,
                "host": "gpu-01",
                "notes": "first try",
            },
            metrics=losses(1.0),
        )
    )
    b = run(
        make_run(
            url,
            ADMIN_KEY,
            name="resnet-b",
            doc={
                "project": project,
                "params": {"lr": 0.01, "opt": "sgd", "layers": 50},
                "status": "running",
            },
            metrics=losses(2.0),
        )
    )
    c = run(
        make_run(
            url,
            BOB_KEY,
            name="bert-c",
            doc={"project": project + "-nlp", "params": {"lr": 0.001}, "status": "failed"},
            metrics=losses(3.0, 8),
        )
    )
    legacy = run(make_run(url, ADMIN_KEY, name="legacy-job", metrics=[("loss", 0.5, 0)]))
    ancient = new_id()  # written as the Go manager would, a year older than the rest
    meta = Metadata(commit_id=ancient, timestamp=1733000000, job_name="ancient-job", user="admin")
    make_experiment(dashd.data, ancient, None, encode_metadata(meta))
    return Lab(a, b, c, legacy, project)


def show_columns(page: Page, params: str, metric: str = "") -> None:
    page.find("#param-columns").clear()
    page.find("#param-columns").send_keys(params)
    page.find("#metric-column").clear()
    page.find("#metric-column").send_keys(metric + "\n")


def filter_by(page: Page, **fields: str) -> None:
    """Fill in the filter form (fields not given are emptied) and submit it."""
    page.js(
        "for (const name of ['project', 'tag', 'user', 'name', 'param', 'status'])"
        "  document.querySelector('#filter-' + name).value = arguments[0][name] || '';"
        "document.querySelector('#apply-filter').click();",
        fields,
    )


def names(page: Page) -> list[str]:
    return [row["name"] for row in page.run_rows()]


def test_the_table_shows_runs_with_params_and_experiments_without_a_document(
    page: Page, lab: Lab
) -> None:
    page.logged_in(ADMIN_KEY)
    show_columns(page, "lr,opt", "loss")
    page.wait(
        lambda: {lab.a, lab.b, lab.c, lab.legacy} <= {r["row-id"] for r in page.run_rows()},
        "the runs",
    )
    rows = {r["row-id"]: r for r in page.run_rows()}
    assert rows[lab.a] | {"row-id": ""} == rows[lab.a] | {
        "name": "resnet-a",
        "id": lab.a[:12],
        "project": lab.project,
        "user": "admin",
        "status": "finished",
        "param:lr": "0.1",
        "param:opt": "adam",
        "row-id": "",
    }
    assert rows[lab.c]["user"] == "bob" and rows[lab.c]["param:lr"] == "0.001"
    assert rows[lab.legacy]["name"] == "legacy-job (no run document)"
    assert rows[lab.legacy]["id"] == lab.legacy[:12] and rows[lab.legacy]["param:lr"] == ""
    # The latest value of the chosen metric (loss at step 39 = 1/40).
    page.wait(
        lambda: {r["row-id"]: r["metric"] for r in page.run_rows()}.get(lab.a) == "0.025",
        "the latest loss",
    )


def test_filters_and_sorting_change_the_rows(page: Page, lab: Lab) -> None:
    page.logged_in(ADMIN_KEY)
    filter_by(page, param="lr")
    page.wait(
        lambda: page.text("#runs-notice") == 'error: param filter "lr": write key=value',
        "a form error",
    )
    filter_by(page, tag="t" * 65)
    page.wait(lambda: page.text("#runs-notice").startswith("error: tag: "), "the daemon's word")
    filter_by(page, project=lab.project)
    page.wait(lambda: sorted(names(page)) == ["resnet-a", "resnet-b"], "the project filter")
    filter_by(page, project=lab.project, param="lr=0.1")
    page.wait(lambda: names(page) == ["resnet-a"], "a param filter (a JSON number)")
    filter_by(page, project=lab.project, param="opt=sgd")
    page.wait(lambda: names(page) == ["resnet-b"], "a param filter (a string)")
    filter_by(page, name="resnet-", status="running")
    page.wait(lambda: lab.b in {r["row-id"] for r in page.run_rows()}, "the status filter")
    assert {r["status"] for r in page.run_rows()} == {"running"}
    filter_by(page, user="bob", tag="")
    page.wait(lambda: names(page) == ["bert-c"], "the user filter")
    filter_by(page, tag="baseline", project=lab.project)
    page.wait(lambda: names(page) == ["resnet-a"], "the tag filter")

    filter_by(page, name="resnet-")
    page.wait(lambda: {"resnet-a", "resnet-b"} <= set(names(page)), "both resnets")
    page.click("#runs-table th[data-col='name']")
    page.wait(
        lambda: names(page) == sorted(names(page)) and "among the" in page.text("#runs-notice"),
        "ascending names",
    )
    assert "rows loaded" in page.text("#runs-notice")
    page.click("#runs-table th[data-col='name']")
    page.wait(lambda: names(page) == sorted(names(page), reverse=True), "descending names")
    filter_by(page)
    page.click("#runs-table th[data-col='started']")  # time: the daemon's order
    page.wait(lambda: "oldest first" in page.text("#runs-notice"), "oldest first")
    page.wait(lambda: names(page)[0] == "ancient-job (no run document)", "the oldest first")
    page.click("#runs-table th[data-col='started']")
    page.wait(lambda: "newest first" in page.text("#runs-notice"), "newest first")
    page.wait(lambda: names(page)[-1] == "ancient-job (no run document)", "the oldest last")


def chart(page: Page, name: str) -> list[list[Any]] | None:
    data: list[list[Any]] | None = page.js(
        "return window.__fetchml.charts && window.__fetchml.charts.data(arguments[0])", name
    )
    return data


def test_two_selected_runs_draw_two_series_and_compare_their_params(
    page: Page, lab: Lab, docs_dir: Path
) -> None:
    page.logged_in(ADMIN_KEY)
    filter_by(page, project=lab.project)
    page.wait(lambda: len(page.run_rows()) == 2, "the two runs")
    show_columns(page, "lr,opt,layers", "loss")
    page.wait(lambda: all(r["metric"] for r in page.run_rows()), "the latest losses")
    page.screenshot(docs_dir / "dashboard-runs.png")
    page.click(f"tr[data-id='{lab.a}'] input.select")
    page.click(f"tr[data-id='{lab.b}'] input.select")
    page.click("#chart-selected")
    page.wait(
        lambda: (chart(page, "loss") or [[]])[0] and len(chart(page, "loss") or []) == 3,
        "two loss series",
    )
    data = chart(page, "loss")
    assert data is not None
    assert data[0] == list(range(40))
    assert data[1] == [1.0 / (s + 1) for s in range(40)]
    assert data[2] == [2.0 / (s + 1) for s in range(40)]
    labels = page.js("return window.__fetchml.charts.labels('loss')")
    assert labels == ["resnet-a", "resnet-b"]
    # Hovering shows each run's value in the legend.
    plot = page.find("[data-metric='loss'] .u-over")
    ActionChains(page.driver).move_to_element_with_offset(
        plot, -plot.size["width"] // 2 + 2, 0
    ).perform()
    legend = "[data-metric='loss'] .u-legend .u-series:not(:first-child) .u-value"
    page.wait(lambda: [v.text for v in page.all(legend)] == ["1", "2"], "the values at step 0")
    page.wait(lambda: chart(page, "acc") is not None, "the acc panel")
    diff = {
        tr.find_element("css selector", "th").text: "diff" in (tr.get_attribute("class") or "")
        for tr in page.all("#compare-table tbody tr")
    }
    assert diff["params.lr"] and diff["params.opt"] and diff["name"]
    assert not diff["params.layers"] and not diff["project"]
    page.screenshot(docs_dir / "dashboard-charts.png")


def test_the_run_page_shows_the_document_and_each_metric(page: Page, lab: Lab) -> None:
    page.logged_in(ADMIN_KEY, f"#/run/{lab.a}")
    page.wait(lambda: page.text("#run-metrics tr[data-metric='loss']"), "the metrics table")
    info = page.text("#run-info")
    for shown in ("finished", GIT, "gpu-01", "baseline", "first try", lab.project):
        assert shown in info
    assert "0.1" in page.text("#run-params") and "adam" in page.text("#run-params")
    cells = page.text("#run-metrics tr[data-metric='loss']").split("\t")
    assert cells == ["loss", "0.025", "39", "0.025", "1", "40"]
    assert page.driver.current_url.endswith(f"/#/run/{lab.a}")


def test_unknown_runs_are_said_so(page: Page) -> None:
    unknown = new_id()
    page.logged_in(ADMIN_KEY, f"#/run/{unknown}")
    page.wait(lambda: "no such run" in page.text("main .notice"), "the run page's error")
    page.driver.get(f"{page.base}/#/charts/{unknown}")
    page.wait(
        lambda: f"run {unknown[:12]} not found" in page.text("#charts-status"), "the charts' error"
    )
    page.driver.get(f"{page.base}/#/charts/")
    page.wait(lambda: page.text("#charts-status").startswith("no runs selected"), "no runs")


def test_the_page_stays_on_its_origin_under_its_csp(
    page: Page, lab: Lab, dashd: DaemonProcess
) -> None:
    page.logged_in(ADMIN_KEY)
    page.wait(lambda: page.run_rows(), "the runs")
    page.driver.get_log("browser")  # type: ignore[no-untyped-call]
    page.driver.get(f"{page.base}/#/charts/{lab.a},{lab.b}")
    page.wait(lambda: chart(page, "loss"), "a chart")
    page.driver.get(f"{page.base}/#/jobs")
    page.wait(lambda: page.all("#jobs-table"), "the jobs")
    urls = page.requests_made()
    origin = f"127.0.0.1:{dashd.port}"
    assert urls and all(u.split("/")[2] == origin for u in urls), urls
    assert {u.split(":")[0] for u in urls} == {"http", "ws"}
    policy = page.driver.execute_async_script(
        "fetch('/').then((r) => arguments[0](r.headers.get('content-security-policy')))"
    )
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    console = page.driver.get_log("browser")  # type: ignore[no-untyped-call]
    assert not [e for e in console if "Content Security Policy" in e["message"]], console
    assert not [e for e in console if e["level"] == "SEVERE"], json.dumps(console)


async def log(url: str, rid: str, points: list[tuple[str, float, int]]) -> None:
    async with Client.connect(url, api_key=ADMIN_KEY) as c:
        await c.log_metrics(rid, points)


def test_zoom_reads_the_range_again_and_the_axis_log_and_smoothing_controls(
    page: Page, dashd: DaemonProcess
) -> None:
    points = [("loss", 1.0 + (step % 7), step) for step in range(3000)]
    rid = run(make_run(dashd.url, ADMIN_KEY, name="long", doc={}, metrics=points))
    page.logged_in(ADMIN_KEY, f"#/charts/{rid}")
    page.wait(lambda: chart(page, "loss"), "the chart")
    data = chart(page, "loss")
    assert data is not None
    width = page.js("return window.__fetchml.charts.panels.get('loss').u.width")
    assert len(data[0]) == min(3000, 2 * width) < 3000  # downsampled to twice the width
    # Drag across about 4% of the plot: that range is read again at full resolution.
    plot = page.find("[data-metric='loss'] .u-over")
    left = plot.size["width"] // 3
    (
        ActionChains(page.driver)
        .move_to_element_with_offset(plot, left - plot.size["width"] // 2, 0)
        .click_and_hold()
        .move_by_offset(plot.size["width"] // 25, 0)
        .release()
        .perform()
    )
    scale = "const u = window.__fetchml.charts.panels.get('loss').u; return [u.scales.x.min, u.scales.x.max]"
    low, high = page.js(scale)
    assert 0 < low < high < 2999 and high - low < 300
    wanted = list(range(math.ceil(low), math.floor(high) + 1))
    assert len([s for s in data[0] if low <= s <= high]) < len(wanted)
    page.wait(
        lambda: [s for s in (chart(page, "loss") or [[]])[0] if low <= s <= high] == wanted,
        "every point of the zoomed range",
    )
    ActionChains(page.driver).double_click(plot).perform()  # back to the whole range
    page.wait(
        lambda: len((chart(page, "loss") or [[]])[0]) == len(data[0]), "the whole range again"
    )
    assert page.js(scale) == [0, 2999]

    page.click("#log-y")
    page.wait(
        lambda: (
            page.js(
                "const p = window.__fetchml.charts.panels.get('loss'); return p.u && p.u.scales.y.distr"
            )
            == 3
        ),
        "a log y axis",
    )
    page.js(
        "const s = document.querySelector('#smoothing'); s.value = '0.5';"
        "s.dispatchEvent(new Event('input'))"
    )
    first = data[1][:3]  # 1, 2, 3 at steps 0, 1, 2 (LTTB keeps the first points)
    page.wait(
        lambda: (
            (chart(page, "loss") or [[], []])[1][:2] == [first[0], 0.5 * first[0] + 0.5 * first[1]]
        ),
        "the smoothed series",
    )
    page.js(
        "const x = document.querySelector('#x-axis'); x.value = 'time';"
        "x.dispatchEvent(new Event('change'))"
    )
    page.wait(lambda: min((chart(page, "loss") or [[0]])[0]) > 1_700_000_000, "time on the x axis")
    page.js("document.querySelector('#log-y').click()")  # back to the defaults for other tests
    page.js(
        "const s = document.querySelector('#smoothing'); s.value = '0'; s.dispatchEvent(new Event('input'));"
        "const x = document.querySelector('#x-axis'); x.value = 'step'; x.dispatchEvent(new Event('change'))"
    )


def test_a_run_whose_history_is_too_big_for_one_answer_is_read_name_by_name(
    page: Page, dashd: DaemonProcess
) -> None:
    # 40 names x 1,000 points: 1.2 MB of records, over the 1 MiB a message may hold.
    names_ = [f"metric-{i:02d}" for i in range(40)]
    points = [(name, float(step), step) for name in names_ for step in range(1000)]
    rid = run(make_run(dashd.url, ADMIN_KEY, name="wide", doc={}, metrics=points))
    page.logged_in(ADMIN_KEY, f"#/charts/{rid}")
    page.wait(lambda: chart(page, "metric-39"), "the last panel", timeout=30)
    for name in ("metric-00", "metric-39"):
        data = chart(page, name)
        assert (
            data is not None
            and data[0] == list(range(1000))
            and data[1] == [float(s) for s in range(1000)]
        )
    assert len(page.all("#panels .panel")) == 40
