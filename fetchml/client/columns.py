"""One metric's points as numpy columns: QUERY_METRICS pages decoded without a Python
object per point.

Every record of one name has the same size (the 21-byte head and that name), so a
page's records are a structured numpy array viewed over the payload's bytes; the
columns are copied out once, into arrays sized from the pages' counts.
"""

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fetchml.protocol.metrics import RECORD_MIN

from .errors import ProtocolViolation
from .extras import load_optional

PAGE = struct.Struct(">QI")
"""A DATA `metrics` payload starts with [next:u64][count:u32]."""

Records = npt.NDArray[np.void]


def record_dtype(name: bytes) -> np.dtype[np.void]:
    """metrics.bin's record layout for records named `name`: big-endian, no padding."""
    dtype = np.dtype(
        [
            ("timestamp", ">i8"),
            ("step", ">u4"),
            ("value", ">f8"),
            ("length", "u1"),
            ("name", f"V{len(name)}"),
        ]
    )
    assert dtype.itemsize == RECORD_MIN + len(name)
    return dtype


def decode_page(payload: bytes, name: bytes) -> tuple[int, Records]:
    """(next, records) of a DATA `metrics` payload whose records must all be named `name`.

    A payload whose count does not match its size, or that holds another name,
    raises ProtocolViolation.
    """
    if len(payload) < PAGE.size:
        raise ProtocolViolation(f"metrics page too short: {len(payload)} bytes")
    next_index, count = PAGE.unpack_from(payload)
    text = name.decode(errors="replace")
    dtype = record_dtype(name)
    size = len(payload) - PAGE.size
    if size != count * dtype.itemsize:
        raise ProtocolViolation(
            f"metrics page says {count} records of {text!r} ({dtype.itemsize} bytes each) "
            f"but holds {size} bytes"
        )
    records = np.frombuffer(payload, dtype, count, PAGE.size)
    names_ok = (records["length"] == len(name)).all() and (records["name"] == np.void(name)).all()
    if count and not names_ok:
        raise ProtocolViolation(f"metrics page holds records not named {text!r}")
    return next_index, records


@dataclass(frozen=True, eq=False)
class Columns:
    """The points of one metric in file order: `step` (uint32), `value` (float64) and
    `timestamp` (int64, Unix seconds), one array each, all the same length."""

    step: npt.NDArray[np.uint32]
    value: npt.NDArray[np.float64]
    timestamp: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.step)

    @classmethod
    def of(cls, pages: Sequence[Records]) -> "Columns":
        """The columns of decoded pages, concatenated into arrays allocated once."""
        total = sum(len(page) for page in pages)
        out = cls(
            np.empty(total, np.uint32), np.empty(total, np.float64), np.empty(total, np.int64)
        )
        at = 0
        for page in pages:
            end = at + len(page)
            out.step[at:end] = page["step"]
            out.value[at:end] = page["value"]
            out.timestamp[at:end] = page["timestamp"]
            at = end
        return out

    def to_pandas(self) -> Any:
        """A pandas DataFrame with columns step, value, timestamp (needs the `pandas` extra)."""

        pd = load_optional("pandas", "pandas", "Columns.to_pandas()")
        return pd.DataFrame({"step": self.step, "value": self.value, "timestamp": self.timestamp})


def json_values(values: npt.NDArray[np.float64]) -> list[str]:
    """Each value as JSON text the way shapes.dumps writes a metric's value: finite ones
    as Python's repr, NaN and the infinities as the strings "NaN", "Infinity", "-Infinity"."""
    out = list(map(float.__repr__, values.tolist()))
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        value = out[i]
        out[i] = '"NaN"' if value == "nan" else '"Infinity"' if value == "inf" else '"-Infinity"'
    return out


def csv_values(values: npt.NDArray[np.float64]) -> Iterator[str]:
    """Each value as the CSV export writes it: Python's repr (nan, inf, -inf)."""
    return map(float.__repr__, values.tolist())
