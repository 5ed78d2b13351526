"""The caches stay within `storage.cache_bytes`: downsampling one large experiment after
another, the daemon's resident memory (VmRSS, and its peak VmHWM) grows by at most
the budget plus what the query in progress needs."""

import os
from pathlib import Path

from fetchml.protocol.metrics import decode_metrics_payload
from fetchml.protocol.requests import QueryMetrics
from fetchml.protocol.responses import Data
from tests.support.config import raw_config, write_config
from tests.support.daemon import daemons
from tests.support.experiments import big_experiment
from tests.support.keys import hash_of

LONG = os.environ.get("FETCHML_LONG") == "1"
RECORDS = 10_000_000 if LONG else 600_000
EXPERIMENTS = 2 if LONG else 5
BUDGET = (256 if LONG else 16) << 20
MIB = 1 << 20
COLUMN_BYTES = 20
"""A record in the columns: timestamp, step and value."""


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


async def test_downsampling_many_experiments_stays_within_the_cache_budget(
    tmp_path: Path,
) -> None:
    raw = raw_config(tmp_path, storage={"cache_bytes": BUDGET})
    base = Path(raw["storage"]["base_path"])
    commits = [f"{n + 1:x}" * 40 for n in range(EXPERIMENTS)]
    for commit in commits:
        big_experiment(base, commit, RECORDS, user="admin")
    warm = "f" * 40
    big_experiment(base, warm, 1000, user="admin")
    with daemons(tmp_path) as start:
        daemon = await start(
            write_config(tmp_path / "config.yaml", raw), measured=False
        ).wait_ready()
        client = await daemon.client()

        async def downsample(commit: str) -> None:
            query = QueryMetrics(
                key_hash=hash_of("admin"), commit_id=bytes.fromhex(commit), max_points=100
            )
            response = await client.call(query)
            assert isinstance(response, Data), response
            assert len(decode_metrics_payload(response.payload).records) == 200

        await downsample(warm)  # every module loaded, worker threads started
        baseline, _ = memory(daemon.pid)
        for commit in commits:
            await downsample(commit)
            rss, peak = memory(daemon.pid)
            print(
                f"after {commit[:4]}: VmRSS +{(rss - baseline) / MIB:.1f} MiB, "
                f"peak +{(peak - baseline) / MIB:.1f} MiB"
            )
        # Beside what the budget keeps, the query in progress holds its experiment's
        # columns, the scan's and the parser's buffers (a few MiB), and the allocator
        # keeps some of what was freed: 16 MiB for those.
        in_use = RECORDS * COLUMN_BYTES + 16 * MIB
        limit = BUDGET + in_use
        print(
            f"{EXPERIMENTS} experiments of {RECORDS:,} records, cache_bytes "
            f"{BUDGET / MIB:.0f} MiB: baseline VmRSS {baseline / MIB:.1f} MiB, "
            f"then +{(rss - baseline) / MIB:.1f} MiB, peak +{(peak - baseline) / MIB:.1f} MiB "
            f"(limit +{limit / MIB:.1f} MiB)"
        )
        assert peak - baseline <= limit
        if LONG:  # the target: under the budget + 200 MB whatever is queried
            assert peak <= BUDGET + 200_000_000
        await client.ws.close()
        await daemon.shutdown()
