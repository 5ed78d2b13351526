"""The group-commit flush metrics, kept as plain numbers and exported at scrape time in
the exposition prometheus_client's Counter and Histograms gave: a value equal to a
bucket's bound counts in that bucket."""

from prometheus_client import generate_latest

from fetchml.server.http import Metrics


def samples(metrics: Metrics) -> dict[str, float]:
    lines = generate_latest(metrics.registry).decode().splitlines()
    pairs = (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs if "flush" in name or "appended" in name}


def test_flushes_by_bucket() -> None:
    metrics = Metrics()
    for records, seconds in ((1, 0.0001), (10, 0.00011), (11, 2.0), (2_000_000, 0.5)):
        metrics.on_flush(records, seconds)
    got = samples(metrics)
    assert got["fetchml_metrics_appended_total"] == 2_000_022
    assert got["fetchml_flush_records_count"] == 4
    assert got["fetchml_flush_records_sum"] == 2_000_022
    assert got['fetchml_flush_records_bucket{le="1.0"}'] == 1
    assert got['fetchml_flush_records_bucket{le="10.0"}'] == 2
    assert got['fetchml_flush_records_bucket{le="100.0"}'] == 3
    assert got['fetchml_flush_records_bucket{le="1e+06"}'] == 3
    assert got['fetchml_flush_records_bucket{le="+Inf"}'] == 4
    assert got['fetchml_flush_seconds_bucket{le="0.0001"}'] == 1
    assert got['fetchml_flush_seconds_bucket{le="0.0005"}'] == 2
    assert got['fetchml_flush_seconds_bucket{le="0.5"}'] == 3
    assert got['fetchml_flush_seconds_bucket{le="1.0"}'] == 3
    assert got['fetchml_flush_seconds_bucket{le="+Inf"}'] == 4
    assert abs(got["fetchml_flush_seconds_sum"] - 2.50021) < 1e-9
