"""Points encoded a column at a time: byte for byte what protocol.metrics.encode_record makes."""

import math
from typing import Any

from fetchml.client.batches import encode_name
from fetchml.client.encoding import WIDTH, Columns, Point, encode_points
from fetchml.protocol.metrics import encode_record

T = 1795735109.75
EDGES = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308, -1.5, 3]
"""Values at the edges of a float64 (3: an int, carried as 3.0)."""
LONG = "n" * 255
STEPS = [0, 1, 0xFFFFFFFE, 0xFFFFFFFF]


def expected(points: list[Point], next_step: dict[str, int] | None = None) -> bytes:
    """The codec's own records, one encode_record per point (default steps as the logger's)."""
    following = dict(next_step or {})
    out = []
    for name, value, step, stamp in points:
        step = following.get(name, 0) if step is None else step
        following[name] = step + 1
        out.append(encode_record(int(stamp), step, value, name.encode()))
    return b"".join(out)


def queued(points: list[Point]) -> Columns:
    """The columns of the points as the caller's thread queues them, four items each."""
    items: list[Any] = [item for point in points for item in point]
    return items[0::WIDTH], items[1::WIDTH], items[2::WIDTH], items[3::WIDTH]


def encode(points: list[Point], next_step: dict[str, int] | None = None) -> bytes:
    names = {name: encode_name(name) for name, *_ in points}
    rejected: list[tuple[str, str]] = []
    blob, ends = encode_points(
        queued(points),
        names,
        {} if next_step is None else next_step,
        lambda *why: rejected.append(why),
    )
    assert not rejected
    assert list(ends) == _ends(blob)
    return blob


def _ends(blob: bytes) -> list[int]:
    """Where each record of `blob` ends, from the length bytes."""
    ends, at = [], 0
    while at < len(blob):
        at += 21 + blob[at + 20]
        ends.append(at)
    return ends


def test_one_name_at_the_edges_of_values_and_steps() -> None:
    for name in ("m", "loss", LONG):
        points: list[Point] = [
            (name, value, step, T + i * 0.4)
            for i, (value, step) in enumerate(
                (v, s)
                for v in EDGES
                for s in STEPS  # every value with every step
            )
        ]
        assert encode(points) == expected(points)


def test_names_of_different_lengths_interleaved() -> None:
    names = ["a", "loss", "val/accuracy", LONG, "é" * 127]
    points: list[Point] = [
        (names[i * 7 % len(names)], EDGES[i % len(EDGES)], STEPS[i % len(STEPS)], T + i)
        for i in range(60)
    ]
    assert encode(points) == expected(points)
    same_length: list[Point] = [("ab" if i % 3 else "cd", float(i), i, T) for i in range(30)]
    assert encode(same_length) == expected(same_length)


def test_default_steps_go_on_per_name_across_calls() -> None:
    first: list[Point] = [("a", 1.0, None, T), ("b", 2.0, 7, T), ("b", 3.0, None, T)]
    second: list[Point] = [("a", 4.0, None, T), ("b", 5.0, None, T), ("a", 6.0, 0xFFFFFFFF, T)]
    next_step: dict[str, int] = {}
    assert encode(first, next_step) == expected(first)
    assert next_step == {"a": 1, "b": 9}
    assert encode(second, next_step) == expected(second, {"a": 1, "b": 9})
    assert next_step == {"a": 0x100000000, "b": 10}


def test_a_value_the_wire_cannot_carry_rejects_only_its_point() -> None:
    points: list[Point] = [
        ("a", 1.0, 0, T),
        ("a", "1.5", 1, T),  # type: ignore[list-item]  # a str, not a number
        ("b", 10**400, 0, T),  # too large for a float64
        ("a", 2.0, 2, T),
        ("b", 3.0, None, T),
    ]
    names = {name: encode_name(name) for name, *_ in points}
    rejected: list[tuple[str, str]] = []
    next_step: dict[str, int] = {}
    blob, ends = encode_points(queued(points), names, next_step, lambda *why: rejected.append(why))
    kept = [points[0], points[3], points[4]]
    assert blob == expected(kept) and list(ends) == _ends(blob)
    assert [name for name, _ in rejected] == ["a", "b"]
    assert next_step == {"a": 3, "b": 1}
