"""QUERY_METRICS of one name, answered from its sidecar column a page at a time, stops
exactly where PROTOCOL.md's scan of the file stops: a full page by bytes ends before the
next matching record (found windows later when the ones between hold none), a full page
by `limit` just after its last record, and `next` is 0 at the end of the file."""

from pathlib import Path

import pytest

from fetchml.protocol.metrics import RECORD_MIN, MetricRecord, decode_records
from fetchml.protocol.requests import QueryMetrics
from fetchml.server import columns
from fetchml.server.query import PAGE_OVERHEAD
from tests.support.experiments import STAMP, make_experiment, record
from tests.support.inproc import in_process_daemons
from tests.support.keys import ADMIN
from tests.support.wire import page_of

COMMIT = "7c" * 20
MESSAGE_BYTES = 128 << 10
BUDGET = MESSAGE_BYTES - PAGE_OVERHEAD - 12
WINDOW = 1_000
CYCLE = 7_000
""""loss" row j has step j % CYCLE: a resumed run logs its steps again."""


def metrics() -> bytes:
    """16,000 "loss" records, each followed by an "acc" record."""
    return b"".join(
        record(j % CYCLE, "loss", j / 3, STAMP + j) + record(j, "acc", -j, STAMP + j)
        for j in range(16_000)
    )


def scanned(
    records: list[MetricRecord], step_from: int, step_to: int, limit: int
) -> list[tuple[int, list[MetricRecord]]]:
    """The pages of "loss" in the step range as PROTOCOL.md's scan gives them."""
    size = RECORD_MIN + len("loss")
    pages, after = [], 0
    while True:
        picked: list[MetricRecord] = []
        stop = 0
        for index in range(after, len(records)):
            r = records[index]
            if r.name != "loss" or not step_from <= r.step <= step_to:
                continue
            if (len(picked) + 1) * size > BUDGET:
                stop = index
                break
            picked.append(r)
            if len(picked) == limit:
                stop = index + 1
                break
        stop = 0 if stop >= len(records) else stop
        pages.append((stop, picked))
        if stop == 0:
            return pages
        after = stop


@pytest.mark.parametrize(
    ("step_from", "step_to", "limit"),
    [
        (761, 5_999, 100_000),  # full by bytes at a window's end, next hit two windows on
        (0, 0xFFFFFFFF, 100_000),  # full by bytes inside a window
        (0, 0xFFFFFFFF, 1_000),  # full by limit
        (2_500, 5_999, 5_239),  # limit and bytes at once
        (6_500, 6_999, 100_000),  # few hits, far apart
    ],
)
async def test_one_name_pages_stop_where_the_scan_stops(
    step_from: int, step_to: int, limit: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(columns, "WINDOW_ROWS", WINDOW)
    monkeypatch.setattr(columns, "MIN_READ_ROWS", 10)  # reads as short as a page needs
    data = metrics()
    path = make_experiment(tmp_path / "experiments", COMMIT, data)
    async with in_process_daemons(tmp_path) as start:
        daemon = await start(server={"max_message_bytes": MESSAGE_BYTES})
        client = await daemon.client()
        pages, after = [], 0
        while True:
            request = QueryMetrics(
                key_hash=ADMIN,
                commit_id=bytes.fromhex(COMMIT),
                name="loss",
                step_from=step_from,
                step_to=step_to,
                after=after,
                limit=limit,
            )
            page = page_of(await client.call(request))
            pages.append((page.next, page.records))
            if page.next == 0:
                break
            after = page.next
    assert (path.parent / "index" / "checkpoint").is_file()  # answered from the sidecars
    expected = scanned(decode_records(data), step_from, step_to, limit)
    assert [(n, len(rs)) for n, rs in pages] == [(n, len(rs)) for n, rs in expected]
    assert pages == expected
