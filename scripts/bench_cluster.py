"""Cluster figures of scripts/bench (`--cluster`, and the full run): Debian's redis-server
and CLUSTER_NODES daemons in cluster mode over one data directory, each figure beside a
baseline measured in the same run on the same nodes:

- push latency to a watcher on another node than the writer's, against a watcher on the
  writer's node (CLUSTER_RATE metrics/s in LOG_METRICS of CLUSTER_BATCH); a watcher that
  gets no push within PUSH_TIMEOUT_S of the last write is reported, not waited for;
- each node ingesting its own experiment, all at once, against the first node alone
  taking the same connections and load;
- one experiment written from every node at once, against the same load into one node.

The ingest runs alternate with their baselines ROUNDS times; each keeps its best. Then
every experiment's metrics.bin must hold exactly the records acknowledged, read from the
shared directory by this process, and every node must count them so (LIST_EXPERIMENTS).
Used by scripts/bench.py."""

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench_figures import BY_KEY, Row
from bench_records import Pipeline, Watch
from bench_servers import Bench, Server, commit

from fetchml.protocol.metrics import scan
from tests.support.redis import RedisServer

CLUSTER_NODES = 3
CLUSTER_RATE = 1_000
"""Metrics per second of the paced writer in the push latency runs."""
CLUSTER_BATCH = 10
"""Metrics per LOG_METRICS of the paced writer."""
CLUSTER_WATCHERS = 1
PUSH_TIMEOUT_S = 5.0
INGEST_BATCH = 1_000
"""Metrics per LOG_METRICS in the ingest runs."""
INGEST_WINDOW = 100
ROUNDS = 2
VISIBLE_S = 0.2
"""How long another node's appends may take to show in a node's answers."""
REDIS_MISSING = "the cluster figures need Debian's redis-server: apt-get install redis-server"

SAME, CROSS = "cl-watch-same", "cl-watch-cross"
OWN = [f"cl-own-{i}" for i in range(CLUSTER_NODES)]
ALONE = [f"cl-alone-{i}" for i in range(CLUSTER_NODES)]
SHARED, SHARED_ONE = "cl-shared", "cl-shared-one"


def redis_missing() -> str | None:
    """Why the cluster figures cannot run here, or None."""
    return None if shutil.which("redis-server") else REDIS_MISSING


def detail(result: Any) -> dict[str, Any] | None:
    return None if result is None else asdict(result)


def start_nodes(b: Bench, redis_url: str) -> list[Server]:
    """CLUSTER_NODES daemons in cluster mode over one data directory (made by the first)."""
    labels = [SAME, CROSS, *OWN, *ALONE, SHARED, SHARED_ONE]
    return [
        b.start_daemon(
            f"node-{i}",
            "write",
            {label: b"" for label in labels} if i == 0 else {},
            storage={"base_path": str(base_path(b))},
            cluster={"redis_url": redis_url, "node_name": f"node-{i}"},
        )
        for i in range(CLUSTER_NODES)
    ]


def base_path(b: Bench) -> Path:
    return b.tmp / "cluster" / "experiments"


def check_alive(b: Bench, nodes: list[Server]) -> None:
    for node in nodes:
        b.check_alive(node)


def verify(b: Bench, nodes: list[Server], expected: dict[str, int]) -> None:
    """Each experiment's file holds exactly the acknowledged records and nothing after
    them, and every node counts them so."""
    for label, count in expected.items():
        b.errors.extend(file_problems(base_path(b) / commit(label) / "metrics.bin", count))
    time.sleep(VISIBLE_S)
    for node in nodes:
        b.verify(node, expected)


def file_problems(path: Path, acknowledged: int) -> list[str]:
    """What is wrong with a metrics.bin that should hold `acknowledged` records."""
    data = path.read_bytes() if path.exists() else b""
    end, records, _ = scan(data)
    problems = []
    if records != acknowledged:
        problems.append(f"{path}: {records} records, {acknowledged} were acknowledged")
    if end != len(data):
        problems.append(f"{path}: {len(data) - end} bytes after the last valid record")
    return problems


# -- figures ------------------------------------------------------------------------------


def push_latency(b: Bench, nodes: list[Server]) -> list[Row]:
    """A paced writer on the first node; its watcher on the same node, then on the next."""
    writer, other = nodes[0], nodes[1]
    options = dict(
        writer_url=writer.url,
        per_message=CLUSTER_BATCH,
        rate=CLUSTER_RATE / CLUSTER_BATCH,
        seconds=b.sizes.cluster_seconds,
        watchers=CLUSTER_WATCHERS,
        push_timeout=PUSH_TIMEOUT_S,
    )
    same = b.load(Watch, writer, commits=commit(SAME), **options)
    cross = b.load(Watch, other, commits=commit(CROSS), **options)
    check_alive(b, nodes)
    verify(b, nodes, {SAME: acked(same), CROSS: acked(cross)})
    if same and same.silent:
        b.errors.append(f"{writer.name}: {no_push(same, writer, writer)}")
    if cross and cross.silent:
        b.notes.append(f"cross-node watch: {no_push(cross, writer, other)}")
    b.details["cluster_push"] = {"same_node": detail(same), "cross_node": detail(cross)}
    return [
        Row(
            BY_KEY[f"cluster_push_{percentile}"],
            percentile_ms(cross, percentile),
            percentile_ms(same, percentile),
        )
        for percentile in ("p50", "p99")
    ]


def acked(result: Watch | None) -> int:
    return result.ok * CLUSTER_BATCH if result else 0


def no_push(result: Watch, writer: Server, watched: Server) -> str:
    return (
        f"{result.silent} of {result.watchers} watchers on {watched.name} got no push within "
        f"{PUSH_TIMEOUT_S:g} s of the last of {acked(result):,} records written on {writer.name}"
    )


def percentile_ms(result: Watch | None, which: str) -> float | None:
    latency = result.push_latency_ms if result else None
    return None if latency is None else float(getattr(latency, which))


def ingest(b: Bench, nodes: list[Server], figure: str, spread: list[str], alone: list[str]) -> Row:
    """Connection i LOG_METRICS into experiment spread[i] on node i, all at once; against
    connection i into alone[i] on the first node. The best of ROUNDS alternating runs."""
    options = dict(
        per_message=INGEST_BATCH, messages=b.sizes.cluster_messages, window=INGEST_WINDOW
    )
    runs = (("alone", [nodes[0]] * len(nodes), alone), ("spread", nodes, spread))
    best: dict[str, float] = {}
    counts: Counter[str] = Counter({label: 0 for label in spread + alone})
    b.details[figure] = []
    for _ in range(ROUNDS):
        for key, targets, labels in runs:
            url = ",".join(node.url for node in targets)
            commits = ",".join(commit(label) for label in labels)
            result = b.load(Pipeline, targets[0], url=url, commits=commits, **options)
            check_alive(b, nodes)
            b.details[figure].append({key: detail(result)})
            if result:
                for i, label in enumerate(labels):
                    counts[label] += result.acked(i)
                best[key] = max(best.get(key, 0.0), result.metrics_per_second or 0.0)
    verify(b, nodes, dict(counts))
    return Row(BY_KEY[figure], best.get("spread"), best.get("alone"))


def run(b: Bench, progress: Callable[[str], None]) -> list[Row]:
    """Redis and the nodes, the figures, then everything stopped (the nodes' logs checked)."""
    missing = redis_missing()
    if missing:
        raise RuntimeError(missing)
    redis = RedisServer(b.tmp / "redis")
    try:
        redis.start()
        nodes = start_nodes(b, redis.url)
        progress("cluster started")
        rows = push_latency(b, nodes)
        progress("cluster push_latency")
        rows.append(ingest(b, nodes, "cluster_ingest", OWN, ALONE))
        progress("cluster ingest")
        shared = [SHARED] * len(nodes)
        rows.append(ingest(b, nodes, "cluster_shared", shared, [SHARED_ONE] * len(nodes)))
        progress("cluster shared experiment")
        for node in nodes:
            b.stop(node)
    finally:
        redis.stop()
    return rows
