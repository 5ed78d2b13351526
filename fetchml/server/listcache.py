"""What LIST last found of the experiments it looked at (listing.Seen), kept in
`<base>/.fetchml-listing` so that a restarted daemon lists without reading every
meta.bin and metrics.bin again. Every entry is checked against a stat of the directory
and of metrics.bin before it is used (listing._list_one), so a stale or foreign file
costs a reread, never a wrong answer; one that does not decode is ignored.

The file is JSON lines: a header, then one experiment a line. Each line is encoded and
decoded on its own, so a worker thread saving or loading tens of thousands of entries
never holds the GIL for long: the event loop keeps answering meanwhile.
"""

import json
import logging
import os
from pathlib import Path
from typing import Any

from fetchml.protocol.errors import MalformedRecord
from fetchml.protocol.records import Metadata

from .entries import Damaged, open_regular
from .experiment import FileState
from .files import write_file_atomic
from .listing import Seen

logger = logging.getLogger(__name__)

LISTING = ".fetchml-listing"
VERSION = 2
MAX_BYTES = 256 << 20


def _entry(seen: Seen) -> list[Any]:
    meta = seen.meta
    state = seen.state
    return [
        list(seen.stat),
        None if meta is None else [meta.commit_id, meta.timestamp, meta.job_name, meta.user],
        seen.damaged,
        None if seen.metrics is None else list(seen.metrics),
        None if state is None else [state.end, state.count, state.size],
    ]


def _seen(entry: list[Any]) -> Seen:
    stat, meta, damaged, metrics, state = entry
    return Seen(
        (int(stat[0]), int(stat[1]), int(stat[2])),
        None
        if meta is None
        else Metadata(commit_id=meta[0], timestamp=meta[1], job_name=meta[2], user=meta[3]),
        damaged if damaged is None else str(damaged),
        None if metrics is None else (int(metrics[0]), int(metrics[1]), int(metrics[2])),
        None if state is None else FileState(int(state[0]), int(state[1]), int(state[2])),
    )


def save(base: Path, seen: dict[str, Seen]) -> None:
    lines = [json.dumps({"version": VERSION})]
    lines += [json.dumps([c, *_entry(s)], separators=(",", ":")) for c, s in seen.items()]
    try:
        write_file_atomic(base / LISTING, "\n".join(lines).encode())
    except (OSError, Damaged) as exc:
        logger.warning("%s not written: %s", base / LISTING, exc)


def load(base: Path) -> dict[str, Seen]:
    try:
        fd = open_regular(base / LISTING, os.O_RDONLY, limit=MAX_BYTES)
    except FileNotFoundError:
        return {}
    except (OSError, Damaged) as exc:
        logger.warning("%s ignored: %s", base / LISTING, exc)
        return {}
    try:
        with os.fdopen(fd, encoding="utf-8") as f:
            if json.loads(f.readline()).get("version") != VERSION:
                return {}
            out = {}
            for line in f:
                commit, *entry = json.loads(line)
                out[str(commit)] = _seen(entry)
            return out
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        OSError,
        MalformedRecord,
    ) as exc:
        logger.warning("%s ignored: %s", base / LISTING, exc)
        return {}
