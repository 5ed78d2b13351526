"""The MLflow client's side of scripts/bench_peers.py; runs in the peers' venv (.venv-peers,
with mlflow-skinny), never in the project's. Times one figure against a tracking server
and prints one JSON line: {"seconds": ..., "count": ..., "run_id": ..., "cpu": ...}, cpu
being the server's CPU seconds over the timed part (BENCH_SERVER_PID names the server).

Usage: python bench_peers_mlflow.py MODE URL N [RUN_ID]
  sync   N calls of mlflow.log_metric, each waiting for its answer
  batch  N metrics in log_batch calls of 1,000 (each waits for its answer)
  async  N calls of mlflow.log_metric(synchronous=False), then flush_async_logging()
  fill   N metrics into a new run with log_batch (untimed set-up for `read`)
  read   MlflowClient.get_metric_history of RUN_ID's "loss"
"""

import json
import os
import sys
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

BATCH = 1000  # the most metrics one log_batch may carry


def server_cpu() -> float:
    """The server's CPU seconds so far (/proc/PID/stat of BENCH_SERVER_PID)."""
    stat = Path(f"/proc/{os.environ['BENCH_SERVER_PID']}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_batches(client: MlflowClient, run_id: str, n: int) -> None:
    now = int(time.time() * 1000)
    for first in range(0, n, BATCH):
        metrics = [Metric("loss", i * 0.5, now, i) for i in range(first, min(first + BATCH, n))]
        client.log_batch(run_id, metrics=metrics)


def main() -> int:
    mode, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mlflow.set_tracking_uri(url)
    client = MlflowClient(url)
    if mode == "read":
        run_id = sys.argv[4]
        client.get_metric_history(run_id, "loss")  # warm the connection pool
        cpu = server_cpu()
        start = time.perf_counter()
        history = client.get_metric_history(run_id, "loss")
        seconds = time.perf_counter() - start
        cpu = server_cpu() - cpu
        print(json.dumps({"seconds": seconds, "count": len(history), "run_id": run_id, "cpu": cpu}))
        return 0
    mlflow.set_experiment(f"bench-{mode}-{time.time_ns()}")
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        mlflow.log_metric("warm-up", 0.0)  # the first request opens the connection
        cpu = server_cpu()
        start = time.perf_counter()
        if mode == "sync":
            for i in range(n):
                mlflow.log_metric("loss", i * 0.5, step=i)
        elif mode in ("batch", "fill"):
            log_batches(client, run_id, n)
        elif mode == "async":
            for i in range(n):
                mlflow.log_metric("loss", i * 0.5, step=i, synchronous=False)
            mlflow.flush_async_logging()
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        seconds = time.perf_counter() - start
        cpu = server_cpu() - cpu
    count = len(client.get_metric_history(run_id, "loss"))
    print(json.dumps({"seconds": seconds, "count": count, "run_id": run_id, "cpu": cpu}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
