"""A read of metrics.bin made into what the sidecars take (indexer.py): each name's rows
and the offsets of the anchored records, from the whole cycles of one layout
(fastscan.periodic) or from the records fastscan finds and checks one by one.
"""

from typing import NamedTuple

import numpy as np

from fetchml.protocol.metrics import scan

from .fastscan import HEAD, I64, Buffer, Cycles, Parsed, find_starts, parse
from .sidecar import ANCHOR, ROW, Rows


class Batch(NamedTuple):
    """Records of one read, ready for the sidecars."""

    records: int
    names: list[bytes]
    rows: list[Rows]
    """Each name's rows, in the order of `names`."""
    anchors: I64
    """The file offset of each record whose number is a multiple of ANCHOR."""


def _rows(buf: Buffer, parsed: Parsed, starts: I64, base: int, count: int) -> Batch:
    """The records at `starts` of a buffer at file offset `base`, the first of them record
    number `count`."""
    n = len(starts)
    group, names = parsed.group, parsed.names
    key = group.astype(np.uint16) if len(names) <= 1 << 16 else group  # (sorted in one pass)
    order = np.argsort(key, kind="stable")
    heads = buf.rows(starts[order], HEAD.itemsize).view(HEAD)[:, 0]
    rows = np.empty(n, ROW)
    rows["index"] = order.astype(np.uint64) + np.uint64(count)
    rows["ts"] = heads["ts"]
    rows["step"] = heads["step"]
    rows["value"] = heads["value"]
    ends = np.cumsum(np.bincount(group, minlength=len(names)))
    out = np.split(rows, ends[:-1]) if names else []
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
    return _rows(buf, parsed, found, base, count), end, incomplete
