"""What MetricLogger tests share: counting how flushes were sent, and what a run holds."""

from collections import Counter
from pathlib import Path
from typing import Any

from fetchml.client.shipper import Shipper
from fetchml.protocol.metrics import decode_records, scan


def inline_flushes(monkeypatch: Any) -> list[bool]:
    """What every Shipper.flush_inline returns, in order (`monkeypatch`: pytest's)."""
    results: list[bool] = []
    real = Shipper.flush_inline

    def counted(ship: Shipper) -> bool:
        results.append(real(ship))
        return results[-1]

    monkeypatch.setattr(Shipper, "flush_inline", counted)
    return results


def stored_points(data_dir: Path, run_id: str) -> Counter[tuple[str, int]]:
    """How often each (name, step) is in the valid prefix of the run's metrics.bin."""
    data = (data_dir / run_id / "metrics.bin").read_bytes()
    return Counter((r.name, r.step) for r in decode_records(data[: scan(data).end]))


def stored_records(data_dir: Path, run_id: str) -> list[tuple[str, int, float]]:
    """(name, step, value) of each record in the valid prefix of the run's metrics.bin, in
    file order."""
    data = (data_dir / run_id / "metrics.bin").read_bytes()
    return [(r.name, r.step, r.value) for r in decode_records(data[: scan(data).end])]
