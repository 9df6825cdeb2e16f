"""A time series whose memory stays bounded however long the soak runs."""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left

__all__ = ["BoundedSeries", "downsample"]


class BoundedSeries:
    """Append-only ``(t, value)`` series holding at most ``max_points`` points.

    When full, adjacent pairs in the older half are merged (mean time, mean value), so resolution
    decays with age while recent samples stay exact; the very first and last points are never
    merged. Floats live in ``array('d')`` (16 bytes a point, no per-point objects), allocated at
    full capacity up front: a daemon holding hundreds of series reaches its memory bound when a
    series is created, not hours later when the series fills, so a growing RSS always means
    something (a lazily grown series grew the supervisor ~1 MB/h for the first hours). Merging
    happens in place, so a series never reallocates either.
    """

    __slots__ = ("_max", "_n", "_ts", "_vs")

    def __init__(self, max_points: int = 512) -> None:
        if max_points < 8:
            raise ValueError(f'"max_points" must be >= 8: {max_points}')
        self._max = max_points
        self._n = 0
        zeros = bytes(8 * max_points)
        self._ts: array[float] = array("d", zeros)
        self._vs: array[float] = array("d", zeros)

    @property
    def max_points(self) -> int:
        return self._max

    def append(self, t: float, value: float) -> None:
        """Add a point; ``t`` must not go backwards and both numbers must be finite."""
        if not (math.isfinite(t) and math.isfinite(value)):
            raise ValueError(f"non-finite point: ({t}, {value})")
        n = self._n
        if n and t < self._ts[n - 1]:
            raise ValueError(f"time went backwards: {t} < {self._ts[n - 1]}")
        if n >= self._max:
            self._compact()
            n = self._n
        self._ts[n] = t
        self._vs[n] = value
        self._n = n + 1

    def _compact(self) -> None:
        n = self._n
        half = n // 2
        ts, vs = self._ts, self._vs
        # Merge pairs (1,2), (3,4), ... of the older half in place; index 0 stays exact.
        out = 1
        i = 1
        while i + 1 < half:
            ts[out] = (ts[i] + ts[i + 1]) / 2.0
            vs[out] = (vs[i] + vs[i + 1]) / 2.0
            out += 1
            i += 2
        rest = n - i
        ts[out : out + rest] = ts[i:n]
        vs[out : out + rest] = vs[i:n]
        self._n = out + rest

    def __len__(self) -> int:
        return self._n

    @property
    def last(self) -> tuple[float, float] | None:
        """The newest point, or None when empty."""
        if not self._n:
            return None
        return self._ts[self._n - 1], self._vs[self._n - 1]

    @property
    def first(self) -> tuple[float, float] | None:
        """The oldest point, or None when empty."""
        if not self._n:
            return None
        return self._ts[0], self._vs[0]

    def points(self) -> list[tuple[float, float]]:
        """All retained points, oldest first."""
        n = self._n
        return list(zip(self._ts[:n], self._vs[:n], strict=True))

    def since(self, t0: float) -> list[tuple[float, float]]:
        """Retained points with ``t >= t0``, oldest first."""
        n = self._n
        i = bisect_left(self._ts, t0, 0, n)
        return list(zip(self._ts[i:n], self._vs[i:n], strict=True))

    def window(self, t0: float, t1: float) -> tuple[list[float], list[float]]:
        """Times and values with ``t0 <= t <= t1`` as two lists (the form the statistics take)."""
        n = self._n
        i = bisect_left(self._ts, t0, 0, n)
        j = bisect_left(self._ts, t1, i, n)
        while j < n and self._ts[j] <= t1:
            j += 1
        return self._ts[i:j].tolist(), self._vs[i:j].tolist()


def downsample(
    ts: list[float], ys: list[float], max_points: int
) -> tuple[list[float], list[float]]:
    """Average points into at most ``max_points`` equal-width time bins (empty bins skipped).

    Bin means keep the trend and shrink white noise, and bound the O(n²) statistics' cost.
    """
    n = len(ts)
    if n <= max_points or n == 0:
        return ts, ys
    t0, t1 = ts[0], ts[-1]
    span = t1 - t0
    if span <= 0.0:
        return [t0], [math.fsum(ys) / n]
    width = span / max_points
    out_t: list[float] = []
    out_y: list[float] = []
    cur = -1
    sum_t = sum_y = 0.0
    count = 0
    for t, y in zip(ts, ys, strict=True):
        b = min(int((t - t0) / width), max_points - 1)
        if b != cur:
            if count:
                out_t.append(sum_t / count)
                out_y.append(sum_y / count)
            cur, sum_t, sum_y, count = b, 0.0, 0.0, 0
        sum_t += t
        sum_y += y
        count += 1
    if count:
        out_t.append(sum_t / count)
        out_y.append(sum_y / count)
    return out_t, out_y
