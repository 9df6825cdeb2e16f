"""The sampled allocation profiler: live bytes per stack, estimated at a cost the target does
not feel (the C extension :mod:`soakd._profiler`).

A Poisson process over allocated bytes picks allocations, one every ``interval`` bytes on
average; only those get a stack, and their frees are tracked. A sampled block of ``s`` bytes
was picked with probability ``p = 1 - exp(-s / interval)`` and stands for ``s / p`` bytes
(Horvitz-Thompson: unbiased), so every stack's live bytes come with a variance and a 95 %
interval (:attr:`StackEstimate.interval95`).

The profiler is one per process (it hooks the process's allocators): every
:class:`SampledProfiler` drives the same one. A forked child stops it (the child is not the
profiled process). Without the extension, ``AVAILABLE`` is False and ``UNAVAILABLE_REASON``
says why.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from typing import Any, Protocol, cast

__all__ = [
    "AVAILABLE",
    "DEFAULT_INTERVAL",
    "UNAVAILABLE_REASON",
    "ProfilerStats",
    "SampledProfiler",
    "StackEstimate",
]

# Mean bytes allocated between two samples. benchmarks/profiler_micro.py (a loop that only
# allocates): the hooks' fixed cost is ~3 % at any interval; sampling adds ~0.5 µs per sample,
# so 128 KiB / 512 KiB / 2 MiB cost ~1.06-1.09 / 1.04-1.08 / 1.03-1.05 of no profiler there,
# and a real service allocates far less per second than that loop. What decides is how soon a
# leak has enough samples to stand out of the noise: a site's error goes as
# sqrt(interval / bytes), and a 10 KB/s leak gives one sample every 6.5 s at 64 KiB (every 52 s
# at 512 KiB, too few for a verdict within minutes). A 1 GiB heap keeps ~16k live samples at
# 64 KiB (the block table grows to ``max_blocks``, ~40 bytes per sample).
DEFAULT_INTERVAL = 64 * 1024

RawFrames = tuple[tuple[str, int], ...]
_RawStack = tuple[RawFrames, float, float, float, int, float, float, int]
_Z95 = 1.959963984540054
_ALPHA = 0.05
# Above this many samples at a stack the normal interval on the variance is accurate enough.
_EXACT_MAX_SAMPLES = 400


class _Extension(Protocol):
    def start(
        self, interval: int, frames: int, max_blocks: int, max_stacks: int, seed: int = 0
    ) -> None: ...
    def stop(self) -> None: ...
    def reinstall(self) -> bool: ...
    def is_running(self) -> bool: ...
    def set_interval(self, interval: int) -> bool: ...
    def clear(self) -> None: ...
    def snapshot(self, released: bool = False) -> Any: ...
    def stats(self) -> dict[str, Any]: ...


# A copy of the extension built for this interpreter when the bundled one is for another ABI
# (the target's own Python): set by the supervisor, see soakd.supervisor.interpreter.
ENV_EXTENSION = "SOAKD_PROFILER_EXTENSION"


def _load() -> tuple[_Extension | None, str | None]:
    try:
        module = importlib.import_module("soakd._profiler")
    except ImportError as exc:
        built = os.environ.get(ENV_EXTENSION)
        if not built:
            return None, f"extension soakd._profiler not built for this interpreter: {exc}"
        try:
            return cast(_Extension, _load_file(built)), None
        except (ImportError, OSError) as exc2:
            return None, f"extension soakd._profiler built at {built} does not load: {exc2}"
    return cast(_Extension, module), None


def _load_file(path: str) -> object:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("soakd._profiler", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"not an extension module: {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["soakd._profiler"] = module
    return module


_ext, UNAVAILABLE_REASON = _load()
AVAILABLE: bool = _ext is not None


@dataclass(frozen=True, slots=True)
class StackEstimate:
    """The live allocations of one stack, estimated from its sampled blocks.

    ``frames`` is innermost first, ``(filename, lineno)`` pairs (a tracemalloc raw traceback).
    ``alloc_w2`` / ``free_w2`` are cumulative sums of the Horvitz-Thompson variance terms of the
    sampled allocations / frees (``w²(1 - p)``: the squared weight for small blocks, near zero
    for a block sampled almost surely): the difference of two values estimates the variance of
    the bytes allocated (freed) between two snapshots.
    """

    frames: RawFrames
    est_bytes: float
    est_blocks: float
    variance: float
    sampled: int  # live sampled blocks
    alloc_w2: float
    free_w2: float
    # Live sampled blocks taken at an interval coarser than the current one (after a zoom).
    coarse: int = 0

    @property
    def interval95(self) -> tuple[float, float]:
        """A 95 % confidence interval for the live bytes (low, high).

        The sampled count of a stack's ``N`` live blocks is binomial(N, p); the interval for
        ``N`` inverts the binomial exactly (Clopper-Pearson style; for small blocks this is
        Garwood's Poisson interval scaled by 1/p) with p and the bytes per block taken from the
        estimate, so it keeps its coverage with a handful of samples, for small blocks (wide,
        right-skewed) and large ones (p near 1: narrow). With many samples: normal, on the
        Horvitz-Thompson variance.
        """
        return confidence_interval(self.est_bytes, self.est_blocks, self.variance, self.sampled)


def confidence_interval(
    est_bytes: float, est_blocks: float, variance: float, sampled: int
) -> tuple[float, float]:
    """95 % interval for a stack's live bytes from its estimate (see ``interval95``)."""
    if sampled <= 0 or est_blocks <= 0.0:
        return (0.0, 0.0)
    if sampled > _EXACT_MAX_SAMPLES:
        half = _Z95 * math.sqrt(max(variance, 0.0))
        return (max(est_bytes - half, 0.0), est_bytes + half)
    p = min(sampled / est_blocks, 1.0)  # the blocks' mean sampling probability
    per_block = est_bytes / est_blocks
    if p >= 1.0 - 1e-12:
        return (est_bytes, est_bytes)  # every block is sampled: exact
    low_n, high_n = _binomial_n_interval(sampled, p)
    # The bounds are attained (N = K when every block was sampled): keep rounding in est_bytes
    # / est_blocks from putting the truth a few ulps outside.
    return (low_n * per_block * (1 - 1e-9), high_n * per_block * (1 + 1e-9))


def _log_binom_cdf(k: int, n: int, p: float) -> float:
    """log P(Binomial(n, p) <= k), summed in log space (n may be in the millions)."""
    if k >= n:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [
        base - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k + 1)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def _binomial_n_interval(k: int, p: float) -> tuple[int, int]:
    """Exact 95 % interval for N given K = k ~ Binomial(N, p) with p known."""
    half = math.log(_ALPHA / 2)

    def upper_ok(n: int) -> bool:  # P(K <= k | n) >= alpha/2
        return _log_binom_cdf(k, n, p) >= half

    def lower_ok(n: int) -> bool:  # P(K >= k | n) >= alpha/2
        if k == 0:
            return True
        cdf = math.exp(_log_binom_cdf(k - 1, n, p))
        return 1.0 - cdf >= _ALPHA / 2

    # Largest N with upper_ok (monotone: decreasing in N).
    lo, hi = k, max(k + 1, int(2 * (k + 4) / p) + 10)
    while upper_ok(hi):
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if upper_ok(mid):
            lo = mid
        else:
            hi = mid
    high_n = lo
    # Smallest N with lower_ok (monotone: increasing in N).
    lo, hi = k - 1, high_n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if lower_ok(mid):
            hi = mid
        else:
            lo = mid
    return hi, high_n


@dataclass(frozen=True, slots=True)
class ProfilerStats:
    """The profiler's counters (cumulative since start or clear) and its own memory."""

    running: bool  # sampling now
    installed: bool  # our hooks are the current allocator (no other hook on top)
    chained: bool  # our hooks see the allocations (on top, or under e.g. tracemalloc)
    interval: int
    frames: int
    sampled: int
    frees_seen: int  # sampled blocks freed (a realloc that moves one counts)
    live_blocks: int
    dropped_blocks: int  # samples lost to a full block table (max_blocks)
    dropped_bytes: float  # their estimated bytes: the estimates are low by about this much
    overflow_samples: int  # samples put on the overflow stack (max_stacks reached)
    stacks: int
    memory_bytes: int  # the tables and cached frame tuples (malloc'd, outside Python's heap)
    max_blocks: int
    max_stacks: int

    @property
    def passthrough(self) -> bool:
        """Stopped, but left chained under another hook (e.g. tracemalloc started after us)."""
        return self.chained and not self.running


class SampledProfiler:
    """Start, stop and read the process's sampled allocation profiler."""

    def __init__(self) -> None:
        self._settings: tuple[int, int, int, int] | None = None

    def start(
        self,
        interval: int = DEFAULT_INTERVAL,
        frames: int = 8,
        max_blocks: int = 262144,
        max_stacks: int = 16384,
        *,
        seed: int | None = None,
    ) -> None:
        """Start sampling (a no-op if running with these settings; restarts otherwise).

        ``seed`` fixes the random sampling points (tests); by default time and pid seed them.
        """
        if not 1 <= interval <= 2**40:
            raise ValueError(f"interval must be 1..2**40 bytes: {interval}")
        if not 1 <= frames <= 128:
            raise ValueError(f"frames must be 1..128: {frames}")
        if not 1 <= max_blocks <= 2**26:
            raise ValueError(f"max_blocks must be 1..2**26: {max_blocks}")
        if not 1 <= max_stacks <= 2**24:
            raise ValueError(f"max_stacks must be 1..2**24: {max_stacks}")
        if seed is not None and not 1 <= seed < 2**64:
            raise ValueError(f"seed must be 1..2**64-1: {seed}")
        ext = _require()
        settings = (interval, frames, max_blocks, max_stacks)
        if ext.is_running():
            if settings == self._current():
                return
            ext.stop()
        ext.start(interval, frames, max_blocks, max_stacks, seed or 0)
        self._settings = settings

    def set_interval(self, interval: int) -> bool:
        """Sample at another mean interval from now on, keeping every sample: each block keeps
        the weights of the interval it was sampled at, so the estimates stay unbiased and the
        sites' series continuous. False (nothing changed) when this profile has already seen
        too many intervals: restart it with :meth:`start` then."""
        if not 1 <= interval <= 2**40:
            raise ValueError(f"interval must be 1..2**40 bytes: {interval}")
        kept = _require().set_interval(interval)
        if kept and self._settings is not None:
            self._settings = (interval, *self._settings[1:])
        return kept

    def stop(self) -> None:
        """Stop sampling and forget the samples (stays chained, passing through, when another
        hook was installed on top of it since it started)."""
        if _ext is not None:
            _ext.stop()

    def reinstall(self) -> bool:
        """Chain the hooks in again after another tool took them out (``tracemalloc.stop()``
        restores the allocator it found, dropping a profiler started after it). Samples are
        reset. True if it had to."""
        return _ext is not None and _ext.reinstall()

    @property
    def running(self) -> bool:
        """Sampling now: started, and its hooks still see the allocations."""
        return _ext is not None and _ext.is_running()

    def clear(self) -> None:
        """Forget all samples and stacks (counters included); keep sampling."""
        if _ext is not None:
            _ext.clear()

    def snapshot(self) -> list[StackEstimate]:
        """One estimate per stack with live sampled blocks (holds the GIL: keep it rare)."""
        if _ext is None:
            return []
        return _merged(_ext.snapshot())

    def snapshot_released(self) -> tuple[list[StackEstimate], list[tuple[RawFrames, float]]]:
        """:meth:`snapshot`, and the stacks an earlier snapshot reported that have no live
        block now and are released by this one, each with its final cumulative churn
        (``alloc_w2 + free_w2``): added to what its site's live stacks report, a site's churn
        never falls because one of its stacks died."""
        if _ext is None:
            return [], []
        live, released = _ext.snapshot(released=True)
        return _merged(live), released  # summed per site by the caller

    def stats(self) -> ProfilerStats:
        ext = _require()
        return ProfilerStats(**ext.stats())

    def _current(self) -> tuple[int, int, int, int]:
        st = _require().stats()
        return (st["interval"], st["frames"], st["max_blocks"], st["max_stacks"])


def _merged(raws: list[_RawStack]) -> list[StackEstimate]:
    # Stacks are interned by instruction, so two calls on one line are two entries with the
    # same frames: one estimate per line stack (all the fields add up).
    merged: dict[RawFrames, list[Any]] = {}
    for raw in raws:
        seen = merged.get(raw[0])
        if seen is None:
            merged[raw[0]] = list(raw)
        else:
            for k in range(1, len(raw)):
                seen[k] += raw[k]
    return [StackEstimate(*fields) for fields in merged.values()]


def _require() -> _Extension:
    if _ext is None:
        raise RuntimeError(UNAVAILABLE_REASON or "extension soakd._profiler not built")
    return _ext


def _stop_in_child() -> None:
    # The child of a fork is not the profiled process: stop, leaving its tables consistent.
    if _ext is not None:
        _ext.stop()


if AVAILABLE and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_stop_in_child)
