"""The data of `scripts/bench --large`: a cached data directory holding one large
experiment (Go record layout, ten names, one record per name and step) beside many small
ones, and the baseline that answers the same questions by reading the files with plain
Python and numpy.

The cache lives under ~/.cache/fetchml-bench/large/<records>-<small>/ and is reused
between runs; a `complete` marker is written last, so a half-built one is rebuilt.
"""

import json
import os
import shutil
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from bench_servers import TIMESTAMP, commit, make_bench_experiment

from fetchml.protocol.metrics import RECORD_MIN, encode_record, walk
from tests.support.experiments import make_experiment, meta_bytes

CACHE = Path.home() / ".cache" / "fetchml-bench" / "large"
LARGE = "large"
"""The large experiment's label (bench_servers.commit gives its ID)."""
ACKS = "acks"
"""The experiment another client logs to while the first pass runs: made empty each run."""
NAMES = (
    "loss",
    "accuracy",
    "learning_rate",
    "grad_norm",
    "val_loss",
    "val_accuracy",
    "epoch",
    "throughput",
    "gpu_util",
    "memory_gb",
)
GROUPS_PER_CHUNK = 200_000
"""Steps (of ten records each) written per numpy chunk."""
SMALL_RECORDS = 10
GO_FILES = {"meta.bin", "metrics.bin", "files"}
"""What the Go manager leaves in an experiment directory; anything else is the daemon's."""
SCAN_BYTES = 64 << 20
FORMAT = 1
"""Written in the marker: a cache of another format is rebuilt."""


def value_of(name_index: int, steps: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """A falling, noisy curve per name."""
    curve = 1 / (1 + steps / 1000) + 0.05 * np.sin(steps * (name_index + 1) * 0.37)
    return np.asarray(curve, dtype=np.float64)


def group_dtype() -> np.dtype[np.void]:
    """One step: ten records back to back, `[timestamp:u64][step:u32][value:f64][name:str8]`."""
    fields: list[tuple[str, str]] = []
    for i, name in enumerate(NAMES):
        fields += [(f"t{i}", ">u8"), (f"s{i}", ">u4"), (f"v{i}", ">f8"), (f"n{i}", "u1")]
        fields.append((f"b{i}", f"S{len(name)}"))
    return np.dtype(fields)


def write_large(path: Path, records: int) -> None:
    """`records` records cycling through NAMES, ten per step, built with numpy in chunks."""
    dtype = group_dtype()
    groups = records // len(NAMES)
    with path.open("wb") as out:
        for first in range(0, groups, GROUPS_PER_CHUNK):
            steps = np.arange(first, min(first + GROUPS_PER_CHUNK, groups), dtype=np.int64)
            chunk = np.empty(len(steps), dtype)
            for i, name in enumerate(NAMES):
                chunk[f"t{i}"] = TIMESTAMP + steps // 1000
                chunk[f"s{i}"] = steps
                chunk[f"v{i}"] = value_of(i, steps)
                chunk[f"n{i}"] = len(name)
                chunk[f"b{i}"] = name.encode()
            out.write(chunk.tobytes())
        for i in range(records - groups * len(NAMES)):  # a last, partial step
            value = float(value_of(i, np.array([groups]))[0])
            out.write(encode_record(TIMESTAMP + groups // 1000, groups, value, NAMES[i].encode()))


def write_any_order(path: Path, records: int, seed: int = 0) -> None:
    """`records` records as write_large writes them, but each step's ten records with the
    names in a random order (so no layout of names repeats)."""
    rng = np.random.default_rng(seed)
    lengths = np.array([len(name) for name in NAMES])
    head = np.dtype([("t", ">u8"), ("s", ">u4"), ("v", ">f8"), ("n", "u1")])
    groups = -(-records // len(NAMES))
    with path.open("wb") as out:
        for first in range(0, groups, GROUPS_PER_CHUNK):
            steps = np.arange(first, min(first + GROUPS_PER_CHUNK, groups), dtype=np.int64)
            order = np.argsort(rng.random((len(steps), len(NAMES))), axis=1)
            which = order.reshape(-1)[: records - first * len(NAMES)]
            step = np.repeat(steps, len(NAMES))[: len(which)]
            heads = np.empty(len(which), head)
            heads["t"] = TIMESTAMP + step // 1000
            heads["s"] = step
            heads["v"] = np.choose(which, [value_of(i, step) for i in range(len(NAMES))])
            heads["n"] = lengths[which]
            sizes = RECORD_MIN + lengths[which]
            starts = np.cumsum(sizes) - sizes
            chunk = np.zeros(int(sizes.sum()), np.uint8)
            chunk[starts[:, None] + np.arange(RECORD_MIN)] = heads.view(np.uint8).reshape(-1, 21)
            for i, name in enumerate(NAMES):
                at = starts[which == i] + RECORD_MIN
                chunk[at[:, None] + np.arange(len(name))] = np.frombuffer(name.encode(), np.uint8)
            out.write(chunk.tobytes())


def any_order(records: int, cache: Path = CACHE) -> Path:
    """The cached metrics.bin of write_any_order (written to a temporary name first)."""
    path = cache / f"any-order-{records}-v{FORMAT}.bin"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        write_any_order(partial, records)
        partial.rename(path)
    return path


def build(records: int, small: int, cache: Path = CACHE) -> Path:
    """The cached data directory for these sizes (built when missing or half built), with
    every file the daemon added to an experiment (sidecars, run documents) removed."""
    root = cache / f"{records}-{small}"
    marker = root / "complete"
    if not marker.exists() or json.loads(marker.read_text()).get("format") != FORMAT:
        shutil.rmtree(root, ignore_errors=True)
        base = root / "experiments"
        started = time.monotonic()
        large = commit(LARGE)  # the newest: first in LIST_EXPERIMENTS
        make_experiment(base, large, None, meta_bytes(large, "bench", TIMESTAMP + 1))
        write_large(base / commit(LARGE) / "metrics.bin", records)
        tail = b"".join(encode_record(TIMESTAMP, s, 0.5, b"loss") for s in range(SMALL_RECORDS))
        for i in range(small):
            make_bench_experiment(base, f"small-{i}", tail)
        took = time.monotonic() - started
        marker.write_text(json.dumps({"format": FORMAT, "small": small, "build_s": took}))
    base = root / "experiments"
    reset(base)
    shutil.rmtree(base / commit(ACKS), ignore_errors=True)
    make_bench_experiment(base, ACKS, b"")
    return base


def reset(base: Path) -> None:
    """Leave only what the Go manager wrote: experiment directories holding its files (a
    daemon's dot files beside them, such as its lock and saved listing, go too)."""
    for entry in os.scandir(base):
        if not entry.is_dir(follow_symlinks=False):
            os.unlink(entry.path)
            continue
        for inner in os.scandir(entry.path):
            if inner.name not in GO_FILES:
                if inner.is_dir(follow_symlinks=False):
                    shutil.rmtree(inner.path)
                else:
                    os.unlink(inner.path)


# -- the baseline -------------------------------------------------------------------------


@dataclass
class Scan:
    """What one pass of plain Python and numpy over metrics.bin answers."""

    count: int = 0
    latest: dict[str, tuple[int, float]] = field(default_factory=dict)
    """name -> (step, value) of its last record."""
    steps: list[npt.NDArray[np.uint32]] = field(default_factory=list)
    values: list[npt.NDArray[np.float64]] = field(default_factory=list)
    """The chosen name's points, chunk by chunk."""
    seconds: float = 0.0

    def points(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float64]]:
        return np.concatenate(self.steps), np.concatenate(self.values)


def scan(path: Path, name: str) -> Scan:
    """Count, latest value per name and `name`'s points: record starts by walking the
    lengths (fetchml.protocol.metrics.walk), fields gathered with numpy."""
    result = Scan()
    started = time.perf_counter()
    wanted = name.encode()
    with path.open("rb") as f:
        carry = b""
        while chunk := f.read(SCAN_BYTES):
            data = carry + chunk
            starts = array("q")
            end = walk(data, starts)
            carry = data[end:]
            scan_chunk(
                np.frombuffer(data, np.uint8), np.frombuffer(starts, np.int64), wanted, result
            )
    result.seconds = time.perf_counter() - started
    return result


def scan_chunk(
    data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], wanted: bytes, result: Scan
) -> None:
    result.count += len(starts)
    lengths = data[starts + RECORD_MIN - 1]
    steps = field_at(data, starts + 8, 4).view(">u4").ravel()
    values = field_at(data, starts + 12, 8).view(">f8").ravel()
    for length in np.unique(lengths):
        positions = np.flatnonzero(lengths == length)
        names = field_at(data, starts[positions] + RECORD_MIN, int(length))
        names = names.view(f"S{length}").ravel()
        distinct, last = np.unique(names[::-1], return_index=True)
        for text, at in zip(distinct, last, strict=True):
            index = positions[len(positions) - 1 - at]
            result.latest[text.decode()] = (int(steps[index]), float(values[index]))
        if int(length) == len(wanted):
            mine = positions[names == wanted]
            result.steps.append(steps[mine].astype(np.uint32))
            result.values.append(values[mine].astype(np.float64))


def field_at(
    data: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], size: int
) -> npt.NDArray[np.uint8]:
    """`size` bytes at each offset, one row each (contiguous, ready to view)."""
    rows = np.empty((len(at), size), np.uint8)
    for k in range(size):
        rows[:, k] = data[at + k]
    return rows


def lttb(
    x: npt.NDArray[np.uint32], y: npt.NDArray[np.float64], threshold: int
) -> list[tuple[int, float]]:
    """Largest-Triangle-Three-Buckets, each bucket's areas with numpy (PROTOCOL's rule:
    x = step, y = value, first and last kept)."""
    n = len(x)
    xs, ys = x.astype(np.float64), y
    if threshold >= n or threshold < 3:
        picks = list(range(n)) if threshold >= n else [0, n - 1][:threshold]
        return [(int(x[i]), float(y[i])) for i in picks]
    every = (n - 2) / (threshold - 2)
    chosen, a = [0], 0
    for i in range(threshold - 2):
        avg_start, avg_end = int((i + 1) * every) + 1, min(int((i + 2) * every) + 1, n)
        avg_x, avg_y = xs[avg_start:avg_end].mean(), ys[avg_start:avg_end].mean()
        lo, hi = int(i * every) + 1, int((i + 1) * every) + 1
        area = np.abs((xs[a] - avg_x) * (ys[lo:hi] - ys[a]) - (xs[a] - xs[lo:hi]) * (avg_y - ys[a]))
        a = lo + int(np.argmax(area))
        chosen.append(a)
    chosen.append(n - 1)
    return [(int(x[i]), float(y[i])) for i in chosen]


def in_range(x: npt.NDArray[np.uint32], low: int, high: int) -> int:
    """How many of the points have low <= step <= high."""
    return int(np.count_nonzero((x >= low) & (x <= high)))


def list_small(base: Path, large: Scan) -> tuple[int, float]:
    """LIST's answer the plain way: every meta.bin read, every small metrics.bin walked;
    the large file's count is the scan's (its time added). (experiments, seconds)"""
    started = time.perf_counter()
    found = 0
    for entry in os.scandir(base):
        if entry.name.startswith("."):
            continue
        (Path(entry.path) / "meta.bin").read_bytes()
        if entry.name != commit(LARGE):  # (the large one was counted by the scan)
            walk((Path(entry.path) / "metrics.bin").read_bytes(), array("q"))
        found += 1
    return found, time.perf_counter() - started + large.seconds
