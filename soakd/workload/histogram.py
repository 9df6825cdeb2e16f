"""Bounded latency histogram: fixed log-spaced buckets, ~1 % relative error, O(1) memory.

Layout (DDSketch-style): bucket 0 holds values below ``LOW_MS`` (including 0); bucket ``i ≥ 1``
holds ``[LOW_MS·γ^(i-1), LOW_MS·γ^i)`` with γ = 1.02, up to ``HIGH_MS`` (1 h); larger values go
to the last bucket. A bucket is reported by ``2·lo·γ/(1+γ)``, whose relative error is at most
(γ-1)/(γ+1) ≈ 0.99 %. Results are clamped to the exact min and max, which are tracked aside.
The bucket array is allocated once; recording never allocates beyond transient numbers.
"""

from __future__ import annotations

import math
from array import array
from statistics import NormalDist
from typing import Any

__all__ = ["HIGH_MS", "LOW_MS", "LatencyHistogram"]

LOW_MS = 0.001  # 1 µs
HIGH_MS = 3_600_000.0  # 1 h
_GAMMA = 1.02
_LOG_GAMMA = math.log(_GAMMA)
_INV_LOG_GAMMA = 1.0 / _LOG_GAMMA
_INV_LOW = 1.0 / LOW_MS
_NBUCKETS = math.ceil(math.log(HIGH_MS / LOW_MS) / _LOG_GAMMA) + 2
_LAST = _NBUCKETS - 1
_SCHEMA = "soakd.hist/1"
# Above this many expected observations in the CI's spread, the normal approximation of the
# binomial is indistinguishable from the exact walk and much cheaper.
_EXACT_CI_MAX_VARIANCE = 400.0


def _bucket(ms: float) -> int:
    if ms < LOW_MS:
        return 0
    i = int(math.log(ms * _INV_LOW) * _INV_LOG_GAMMA) + 1
    return i if i < _LAST else _LAST


def _representative(i: int) -> float:
    if i == 0:
        return 0.0
    lo = LOW_MS * _GAMMA ** (i - 1)
    return 2.0 * lo * _GAMMA / (1.0 + _GAMMA)


class LatencyHistogram:
    """Millisecond latencies in fixed log-linear buckets; mergeable, JSON-serialisable."""

    __slots__ = ("_buckets", "_count", "_hi", "_lo", "_max", "_min", "_sum")

    def __init__(self) -> None:
        self._buckets = array("Q", bytes(8 * _NBUCKETS))
        self._clear_totals()

    def _clear_totals(self) -> None:
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = 0.0
        # Range of non-empty buckets: keeps merge, reset and percentile walks short.
        self._lo = _NBUCKETS
        self._hi = -1

    # -- recording -------------------------------------------------------------------------

    def record(self, ms: float) -> None:
        """Add one observation in milliseconds; negative is read as 0, NaN is ignored."""
        if ms != ms:  # NaN
            return
        if ms < 0.0:
            ms = 0.0
        i = _bucket(ms)
        self._buckets[i] += 1
        self._count += 1
        self._sum += ms
        if ms > self._max:
            self._max = ms
        if ms < self._min:
            self._min = ms
        if i < self._lo:
            self._lo = i
        if i > self._hi:
            self._hi = i

    def merge(self, other: LatencyHistogram) -> None:
        """Add every observation of ``other`` to this histogram."""
        if other._count == 0:
            return
        mine, theirs = self._buckets, other._buckets
        for i in range(other._lo, other._hi + 1):
            c = theirs[i]
            if c:
                mine[i] += c
        self._count += other._count
        self._sum += other._sum
        self._max = max(self._max, other._max)
        self._min = min(self._min, other._min)
        self._lo = min(self._lo, other._lo)
        self._hi = max(self._hi, other._hi)

    def reset(self) -> None:
        """Forget every observation (the bucket array is reused, not reallocated)."""
        b = self._buckets
        for i in range(self._lo, self._hi + 1):
            b[i] = 0
        self._clear_totals()

    def copy(self) -> LatencyHistogram:
        out = LatencyHistogram()
        out.merge(self)
        return out

    # -- reading ---------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._count

    @property
    def max(self) -> float:
        """Largest value recorded (exact); 0 when empty."""
        return self._max

    @property
    def min(self) -> float:
        """Smallest value recorded (exact); 0 when empty."""
        return self._min if self._count else 0.0

    @property
    def mean(self) -> float:
        return self._sum / self._count if self._count else 0.0

    def value_at_rank(self, rank: int) -> float:
        """The ``rank``-th smallest observation (1-based, clamped), within ~1 %."""
        if self._count == 0:
            return 0.0
        rank = min(max(rank, 1), self._count)
        if rank == self._count:
            return self._max
        if rank == 1:
            return self._min
        seen = 0
        b = self._buckets
        for i in range(self._lo, self._hi + 1):
            seen += b[i]
            if seen >= rank:
                return min(max(_representative(i), self._min), self._max)
        return self._max  # unreachable while counts are consistent

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (``q`` in 0..100, nearest rank); 0 when empty."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be within 0..100: {q}")
        if self._count == 0:
            return 0.0
        return self.value_at_rank(math.ceil(q / 100.0 * self._count))

    def percentile_ci(self, q: float, confidence: float = 0.95) -> tuple[float, float] | None:
        """Distribution-free confidence interval of the ``q``-th percentile.

        The interval between order statistics ``X(l)`` and ``X(u)`` covers the true quantile
        when ``l ≤ B < u`` for ``B ~ Binomial(n, q/100)``; ``l`` and ``u`` are chosen as the
        narrowest ranks reaching ``confidence``. None when no ranks in 1..n reach it (the
        sample is too small for that percentile).
        """
        if not 0.0 < q < 100.0:
            raise ValueError(f"percentile must be strictly within 0..100: {q}")
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be within (0, 1): {confidence}")
        ranks = _order_statistic_ranks(self._count, q / 100.0, confidence)
        if ranks is None:
            return None
        return self.value_at_rank(ranks[0]), self.value_at_rank(ranks[1])

    # -- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Compact sparse form: only non-empty buckets, as ``[index, count]`` pairs."""
        b = self._buckets
        pairs = [[i, b[i]] for i in range(self._lo, self._hi + 1) if b[i]]
        return {
            "schema": _SCHEMA,
            "gamma": _GAMMA,
            "low_ms": LOW_MS,
            "count": self._count,
            "sum": self._sum,
            "min": self.min,
            "max": self._max,
            "buckets": pairs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyHistogram:
        """Inverse of :meth:`to_dict`; ValueError when the data is not one of ours."""
        if data.get("schema") != _SCHEMA or data.get("gamma") != _GAMMA:
            raise ValueError(
                f"not a {_SCHEMA} histogram with gamma {_GAMMA}: "
                f"schema={data.get('schema')!r}, gamma={data.get('gamma')!r}"
            )
        out = cls()
        total = 0
        try:
            for i, c in data["buckets"]:
                i, c = int(i), int(c)
                if not 0 <= i < _NBUCKETS or c < 0:
                    raise ValueError(f"bucket [{i}, {c}] out of range")
                out._buckets[i] += c
                if c:
                    out._lo = min(out._lo, i)
                    out._hi = max(out._hi, i)
                total += c
            count = int(data["count"])
            if count != total:
                raise ValueError(f"count {count} != sum of buckets {total}")
            out._count = count
            out._sum = float(data["sum"])
            out._max = float(data["max"])
            out._min = float(data["min"]) if count else math.inf
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed histogram: {exc!r}") from None
        return out

    def __repr__(self) -> str:
        return (
            f"LatencyHistogram(count={self._count}, p50={self.percentile(50):.3f}, "
            f"p99={self.percentile(99):.3f}, max={self._max:.3f})"
        )


def _order_statistic_ranks(n: int, p: float, confidence: float) -> tuple[int, int] | None:
    """Ranks (l, u), 1 ≤ l < u ≤ n, with P(l ≤ Binomial(n, p) ≤ u-1) ≥ confidence."""
    if n < 2:
        return None
    # Best possible coverage uses l = 1, u = n.
    if 1.0 - p**n - (1.0 - p) ** n < confidence:
        return None
    variance = n * p * (1.0 - p)
    if variance > _EXACT_CI_MAX_VARIANCE:
        z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
        half = z * math.sqrt(variance)
        lo = max(1, math.floor(n * p - half))
        hi = min(n, math.ceil(n * p + half) + 1)
        return lo, hi
    log_p, log_q = math.log(p), math.log1p(-p)
    lg_n1 = math.lgamma(n + 1)

    def pmf(k: int) -> float:
        return math.exp(
            lg_n1 - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p + (n - k) * log_q
        )

    # Grow [lo, hi] (values of B) greedily from the mode towards the heavier side.
    k = min(max(math.floor((n + 1) * p), 1), n - 1)
    lo = hi = k
    p_lo, p_hi = pmf(lo - 1) if lo > 1 else -1.0, pmf(hi + 1) if hi < n - 1 else -1.0
    cover = pmf(k)
    while cover < confidence:
        if p_lo < 0 and p_hi < 0:
            return None
        if p_lo >= p_hi:
            lo -= 1
            cover += p_lo
            p_lo = pmf(lo - 1) if lo > 1 else -1.0
        else:
            hi += 1
            cover += p_hi
            p_hi = pmf(hi + 1) if hi < n - 1 else -1.0
    return lo, hi + 1
