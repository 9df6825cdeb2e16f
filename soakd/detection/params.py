"""Detector settings: :class:`DetectionParams` and how they derive from the config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # soakd.config imports the leak kinds from this package: no runtime import
    from soakd.config import DetectionConfig, SamplingConfig

__all__ = ["HOUR", "MIB", "DetectionParams"]

MIB = 1024.0 * 1024.0
HOUR = 3600.0


@dataclass(frozen=True)
class DetectionParams:
    """Detector settings; slopes are per hour, durations in seconds since run start."""

    warmup_floor_s: float = 60.0  # never judge before this
    warmup_max_s: float = 600.0  # automatic warm-up end never later than this
    warmup_settle_s: float = 60.0  # data needed after a candidate warm-up end to accept it
    window_s: float = 1800.0  # analysis window: the latest N seconds after warm-up
    # Shortest window judged: a cache filling for less than this is never even suspected.
    min_window_s: float = 60.0
    min_heap_slope_bytes_per_h: float = 1.0 * MIB
    # Allocator creep of a leak-free process reaches 2–5 KB/s (7–18 MiB/h) early on.
    min_native_slope_bytes_per_h: float = 64.0 * MIB
    native_min_window_s: float = 600.0  # RSS-only growth must persist this long
    min_count_slope_per_h: float = 20.0  # fds, threads, tasks
    min_object_slope_per_h: float = 600.0  # live objects of one type: churn is large
    min_count_growth: float = 3.0  # a count must grow by at least this over the window
    # Live objects of one type must grow by at least this over the window: the interpreter's
    # and libraries' own bounded structures fill by about as much (asyncio keeps up to ~100
    # cancelled timer handles, lru_cache holds 128 by default) and, counted after full
    # collections, their filling is a clean ramp.
    min_object_growth: float = 100.0
    confidence: float = 0.99
    confirm_after: int = 3  # consecutive analyses agreeing before "confirmed"
    # Site series the detector holds (not ``sampling.max_sites``, the sites sent per sample).
    max_sites: int = 200
    max_types: int = 200  # also the bound for keys of each other signal
    max_points: int = 512  # per series; older points are merged, recent ones kept exact
    gap_s: float = 60.0  # a pause in a series at least this long (and 5× its interval) restarts it
    # Suspicion (it only turns tracing on) is judged from the warm-up floor on, on this short a
    # window, before the warm-up end is decided: the site then has data by the time it is.
    suspect_window_s: float = 20.0
    # RSS growth that raises suspicion: far below the native bar, above most allocator creep.
    suspect_rss_slope_bytes_per_h: float = 16.0 * MIB
    # Site series are exact (traced bytes at one line) or sampled estimates whose noise is
    # known: a shorter window suffices.
    site_min_window_s: float = 30.0
    # A sampled site's growth over the window must exceed this many standard deviations of
    # the estimator (one-sided: about 2 % of stable sites' fluctuations pass, and they must
    # still pass the trend test and the process-wide corroboration).
    site_noise_z: float = 2.0
    # Bytes per block for the heap level fed as blocks (``heap_blocks`` × this): a site's block
    # rate is compared with the process's block rate in these units.
    block_bytes: float = 80.0
    # A site's growth must show in the process as a whole at this share of its rate (blocks or
    # RSS), or it is turnover: blocks allocated since tracing started replacing older ones.
    corroboration: float = 0.5
    # RSS settles this long after tracing starts (tracemalloc and the agent's own tables grow):
    # before that, RSS cannot corroborate a site.
    tracing_settle_s: float = 60.0
    # While sites are traced, a heap-level finding waits this long for one to explain it before
    # it is confirmed on its own: a cache still filling shows at its exact site series as
    # slowing down (no leak) while the noisier block count still looks straight. A leak spread
    # thinly over many sites is confirmed after the wait.
    attribution_wait_s: float = 120.0
    # Tracing started on suspicion stays on at least this long (and while a suspect or a newly
    # found site is being judged): long enough for a dozen site samples and two of the
    # detector's shortest windows. Read by the supervisor, not by the detector.
    tracing_hold_s: float = 120.0

    # Python memory and object findings confirm only after a full collection in the target
    # since their streak began (garbage awaiting one reads as growth for minutes), or after
    # ``attribution_wait_s`` if none comes. Set when the supervisor collects on suspicion.
    collection_check: bool = False

    def __post_init__(self) -> None:
        # from_config cannot break these (DetectionConfig checks its keys); direct use can.
        if self.warmup_max_s < self.warmup_floor_s:
            raise ValueError(
                f'"warmup_max_s" must be >= warmup_floor_s: {self.warmup_max_s} '
                f"< {self.warmup_floor_s}"
            )
        if not 0.5 < self.confidence < 1.0:
            raise ValueError(f'"confidence" must be in (0.5, 1): {self.confidence}')
        if self.confirm_after < 1:
            raise ValueError(f'"confirm_after" must be >= 1: {self.confirm_after}')
        if self.window_s < self.min_window_s:
            raise ValueError(
                f'"window_s" must be >= min_window_s: {self.window_s} < {self.min_window_s}'
            )
        for name in ("max_sites", "max_types"):
            if getattr(self, name) < 1:
                raise ValueError(f'"{name}" must be >= 1: {getattr(self, name)}')

    @classmethod
    def from_config(cls, cfg: DetectionConfig, sampling: SamplingConfig) -> DetectionParams:
        """The settings a run's ``[detection]`` and ``[sampling]`` tables give.

        Keys mapped one to one: ``warmup_max``, ``window``, ``native_window``, the four slopes,
        ``confidence`` and ``confirm_after``. Derived values:

        - ``warmup_floor_s = warmup``: nothing is judged before it.
        - ``warmup_settle_s = warmup``: a warm-up end is accepted after four fifths as much
          data as the floor.
        - ``min_window_s = min(60 s, window / 2)``: the shortest window judged, so that a
          short ``window`` is still judged on half of it.
        - ``tracing_hold_s = max(12 × sampling.sites_interval, min(120 s, window))``: a dozen
          site samples and two of the shortest windows.
        - ``collection_check = sampling.enabled``: the supervisor collects on suspicion.

        Every other field keeps its default.
        """
        return cls(
            warmup_floor_s=cfg.warmup,
            warmup_max_s=cfg.warmup_max,
            warmup_settle_s=cfg.warmup,
            window_s=cfg.window,
            min_window_s=min(60.0, cfg.window / 2),
            min_heap_slope_bytes_per_h=float(cfg.min_heap_slope),
            min_native_slope_bytes_per_h=float(cfg.min_native_slope),
            native_min_window_s=cfg.native_window,
            min_count_slope_per_h=cfg.min_count_slope,
            min_object_slope_per_h=cfg.min_object_slope,
            confidence=cfg.confidence,
            confirm_after=cfg.confirm_after,
            tracing_hold_s=max(12 * sampling.sites_interval, min(120.0, cfg.window)),
            collection_check=sampling.enabled,
        )
