"""A read of metrics.bin made into what the sidecars take (indexer.py): each name's rows
and the offsets of the anchored records, from the whole cycles of one layout
(fastscan.periodic) or from the records fastscan finds and checks one by one.
"""

from typing import NamedTuple

import numpy as np

from fetchml.protocol.metrics import scan

from .fastscan import I64, Buffer, Cycles, Parsed, find_starts, parse
from .sidecar import ANCHOR, ROW, Rows

FEW_NAMES = 16
"""Up to this many names in a buffer, each is picked out by a comparison; more are sorted."""


class Batch(NamedTuple):
    """Records of one read, ready for the sidecars."""

    records: int
    names: list[bytes]
    rows: list[Rows]
    """Each name's rows, in the order of `names`."""
    anchors: I64
    """The file offset of each record whose number is a multiple of ANCHOR."""


def _rows(parsed: Parsed, starts: I64, base: int, count: int) -> Batch:
    """The records at `starts` of a buffer at file offset `base`, the first of them record
    number `count`."""
    n = len(starts)
    heads, group, names = parsed.heads, parsed.group, parsed.names
    numbers = np.arange(count, count + n, dtype=np.uint64)
    if len(names) == 1:
        picks = [np.arange(n)]
    elif len(names) <= FEW_NAMES:
        picks = [np.flatnonzero(group == g) for g in range(len(names))]
    else:
        order = np.argsort(group, kind="stable")
        picks = np.split(order, np.cumsum(np.bincount(group, minlength=len(names)))[:-1])
    out = []
    for pick in picks:
        rows = np.empty(len(pick), ROW)
        rows["index"] = numbers[pick]
        rows["ts"] = heads["ts"][pick]
        rows["step"] = heads["step"][pick]
        rows["value"] = heads["value"][pick]
        out.append(rows)
    return Batch(n, names, out, starts[-count % ANCHOR :: ANCHOR] + base)


def cycles(found: Cycles, base: int, count: int) -> Batch:
    """Whole cycles of a buffer at file offset `base`, the first record number `count`."""
    table, period = found.table, len(found.names)
    n = len(table) * period
    first = np.arange(count, count + n, period, dtype=np.uint64)[:, None]
    names = list(dict.fromkeys(found.names))
    out = []
    for name in names:
        at = [j for j, other in enumerate(found.names) if other == name]
        rows = np.empty((len(table), len(at)), ROW)
        rows["index"] = first + np.array(at, dtype=np.uint64)
        for i, j in enumerate(at):
            rows["ts"][:, i] = table[f"ts{j}"]
            rows["step"][:, i] = table[f"step{j}"]
            rows["value"][:, i] = table[f"value{j}"]
        out.append(rows.reshape(-1))
    numbers = np.arange(-count % ANCHOR, n, ANCHOR)
    offsets = np.array(found.offsets, dtype=np.int64)
    anchors = numbers // period * found.size + offsets[numbers % period] + base
    return Batch(n, names, out, anchors)


def general(data: bytes, base: int, count: int) -> tuple[Batch, int, bool]:
    """The valid records of a buffer at file offset `base` (the first record number
    `count`), where they end, and whether more bytes may extend them."""
    buf = Buffer(data)
    found, stop = find_starts(buf)
    parsed = parse(buf, found)
    if len(found) and parsed.plain:
        end, incomplete = stop, True
    else:  # the end of the valid prefix is in this buffer: the slow, exact rule
        result = scan(data)
        end, incomplete = result.end, result.incomplete
        found = found[found < end]
        parsed = parse(buf, found)
    return _rows(parsed, found, base, count), end, incomplete
