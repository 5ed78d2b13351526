"""Micro-benchmark of the store's append path (not a test).

Measures, in one run and on the same pre-encoded bytes:
  (a) a plain buffered `f.write` of each batch of records into one file;
  (b) ExperimentStore appending every batch through submit() with many appends in
      flight, durability "write";
  (c) the same with durability "fsync".
Prints metrics/s for each (best of --repeat runs) and the store-to-plain ratio. Exits non-zero only on errors
(including a store file that does not hold exactly the records appended).

Run from the repo root with the project installed:  python scripts/bench_store.py
"""

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fetchml.protocol.metrics import encode_record
from fetchml.protocol.records import Metadata
from fetchml.server.storage import Durability, ExperimentStore

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TIMESTAMP = 1795735109
NAMES = [b"loss", b"accuracy", b"learning_rate", b"val_loss", b"grad_norm"]


@dataclass
class Result:
    label: str
    metrics: int
    seconds: float
    flushes: int = 0

    @property
    def rate(self) -> float:
        return self.metrics / self.seconds


Batch = tuple[bytes, int]
"""Encoded records and how many."""


def encode_batches(total: int, batch: int) -> list[Batch]:
    """`total` records in batches of `batch`, encoded once up front (as a handler would)."""
    out = []
    for first in range(0, total, batch):
        size = min(batch, total - first)
        data = b"".join(
            encode_record(TIMESTAMP, first + i, (first + i) * 0.001, NAMES[i % len(NAMES)])
            for i in range(size)
        )
        out.append((data, size))
    return out


def bench_plain(path: Path, batches: list[Batch], metrics: int) -> Result:
    started = time.perf_counter()
    with path.open("wb") as f:
        for data, _ in batches:
            f.write(data)
    seconds = time.perf_counter() - started
    path.unlink()
    return Result("plain f.write", metrics, seconds)


async def bench_store(
    base: Path, batches: list[Batch], submitters: int, durability: Durability
) -> Result:
    flushes = 0

    def count_flush(_records: int, _seconds: float) -> None:
        nonlocal flushes
        flushes += 1

    total = sum(n for _, n in batches)
    nbytes = sum(len(data) for data, _ in batches)
    async with ExperimentStore(base, durability=durability) as store:
        store.flush_hooks.append(count_flush)
        await store.create(Metadata(commit_id=COMMIT, timestamp=TIMESTAMP, job_name="bench"))
        work: Iterator[Batch] = iter(batches)
        firsts: list[int] = []

        async def submitter() -> None:
            for data, n in work:  # one shared iterator: each batch is taken once
                firsts.append(await store.append(COMMIT, data, n))

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(submitters)))
        seconds = time.perf_counter() - started

        counted = await store.count(COMMIT)
        if counted != total:
            raise RuntimeError(f"store holds {counted} records, not {total}")
        if len(set(firsts)) != len(batches):
            raise RuntimeError("appends returned overlapping first indices")
    size = (base / COMMIT / "metrics.bin").stat().st_size
    if size != nbytes:
        raise RuntimeError(f"metrics.bin has {size} bytes, expected {nbytes}")
    return Result(f"store durability={durability}", total, seconds, flushes)


def best(results: Iterable[Result]) -> Result:
    return min(results, key=lambda r: r.seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1_000, help="records per append")
    parser.add_argument("--submitters", type=int, default=64, help="appends in flight")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if min(args.metrics, args.batch, args.submitters, args.repeat) < 1:
        parser.error("--metrics, --batch, --submitters and --repeat must be positive")

    batches = encode_batches(args.metrics, args.batch)
    nbytes = sum(len(data) for data, _ in batches)
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=args.dir) as tmp:
        root = Path(tmp)
        print(
            f"{args.metrics:,} metrics in batches of {args.batch:,} ({nbytes / 1e6:.1f} MB), "
            f"{args.submitters} appends in flight, in {root} (pid {os.getpid()})"
        )
        plain = best(
            bench_plain(root / "plain.bin", batches, args.metrics) for _ in range(args.repeat)
        )
        results = [plain]
        durabilities: list[Durability] = ["write", "fsync"]
        for durability in durabilities:
            runs = []
            for n in range(args.repeat):
                base = root / f"store-{durability}-{n}"
                runs.append(asyncio.run(bench_store(base, batches, args.submitters, durability)))
                shutil.rmtree(base)
            results.append(best(runs))
    for r in results:
        line = f"{r.label:<24} {r.rate:>14,.0f} metrics/s  {nbytes / r.seconds / 1e6:>8.1f} MB/s"
        if r is not plain:
            line += f"  ratio to plain {r.rate / plain.rate:5.2f}  flushes {r.flushes}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
