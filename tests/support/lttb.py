"""An independent LTTB to check the daemon's against."""

import math


def reference_lttb(points: list[tuple[int, float]], threshold: int) -> list[int]:
    """Steinarsson's Largest-Triangle-Three-Buckets, written from the paper's pseudo-code."""
    n = len(points)
    if threshold >= n:
        return list(range(n))
    if threshold == 1:
        return [0]
    if threshold == 2:
        return [0, n - 1]
    every = (n - 2) / (threshold - 2)
    sampled = [0]
    a = 0
    for i in range(threshold - 2):
        avg_start = math.floor((i + 1) * every) + 1
        avg_end = min(math.floor((i + 2) * every) + 1, n)
        avg_x = sum(points[j][0] for j in range(avg_start, avg_end)) / (avg_end - avg_start)
        avg_y = sum(points[j][1] for j in range(avg_start, avg_end)) / (avg_end - avg_start)
        ax, ay = points[a]
        best, best_area = -1, -1.0
        for j in range(math.floor(i * every) + 1, math.floor((i + 1) * every) + 1):
            x, y = points[j]
            area = abs((ax - avg_x) * (y - ay) - (ax - x) * (avg_y - ay)) / 2
            if area > best_area:
                best, best_area = j, area
        sampled.append(best)
        a = best
    sampled.append(n - 1)
    return sampled
