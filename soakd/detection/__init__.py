"""Stateful, bounded leak detector: feeds on samples, judges windows, tracks findings.

Pure: no clocks, no I/O. The supervisor calls :meth:`Detector.add` for every sample and
:meth:`Detector.analyze` every 10–30 s with the run-relative time; both are cheap enough to call
on the event loop (flat series are screened out in O(n) before the O(n²) statistics run).

Glossary:

* **series**: one sequence of (time, value) samples, named by a signal and a key (``heap``/
  ``heap``, ``site``/``app.py:42``, ``type``/``Session``); held as a track in ``tracks.py``.
* **signal**: what a series measures (:data:`SignalKind`: ``rss``, ``heap``, ``malloc``,
  ``site``, ``type``, ``fds``, ``threads``, ``tasks``). The store calls RSS ``rss_bytes``.
* **kind**: what a finding reports (:data:`LeakKind`): ``heap`` (from ``site`` and ``heap``),
  ``native`` (from ``rss``), ``objects`` (from ``type``), and ``fds``/``threads``/``tasks``.
* **heap level**: what the detector judges as ``heap``: Python blocks × ``block_bytes``
  (soakd's own blocks left out), continuous whether tracing or not.
* **heap bytes**: tracemalloc's traced bytes (``heap_bytes`` in the store); they step when
  tracing starts, so the detector judges them only where no block count is known (the
  summary's ``memory.heap_slope_bytes_per_h`` is computed from them).

Decisions, in short:

* Nothing is judged before the warm-up ends: at least ``warmup_floor_s``, then automatically
  when the growth rate of ``heap`` and ``rss`` has settled, never later than ``warmup_max_s``
  (``warmup.py``).
* Each series is judged on the latest ``window_s`` after warm-up (and after its last gap);
  when that window looks flat or noisy, also on its latest half and quarter, so that a leak
  that starts late is found before the flat part leaves the window, provided the recent part
  makes new highs (churn wanders within its range). The three tests share the significance
  level (Bonferroni) (``windows.py``).
* A finding is ``suspected`` on the first leak verdict, ``confirmed`` after ``confirm_after``
  consecutive ones spanning at least a quarter of the shortest window judged, and ``cleared``
  after ``confirm_after`` consecutive decisive non-leak verdicts (a plateau reached, a flush
  seen). Windows without enough fresh data change nothing (``findings.py``).
* ``native``: RSS grows by at least ``min_native_slope_bytes_per_h`` more than the Python heap
  does, over at least ``native_min_window_s``: allocator creep (2–5 KB/s for minutes in a
  leak-free process) must not look like a leak (``corroboration.py``).
* ``objects``: a type's live count grows. Not raised while a ``heap`` finding is active: the
  leaking site is the better pointer and a leak of one kind of object drags others along
  (a leaked instance also leaks its ``dict``). Growing types are listed in the heap finding's
  evidence (``signals``) instead.
* The heap-level finding (key ``heap``, no site) is hidden from :meth:`Detector.findings` while
  a site finding is active: the site says the same thing more precisely. While sites are
  traced and none has a finding, it waits ``attribution_wait_s`` before it is confirmed.
* ``site`` (``heap`` kind with a line): judged on windows from ``site_min_window_s`` (traced
  bytes at one line are exact), but a site leak must show in the process as a whole, in the
  newest part of its window: its block rate in the process's block count, or, for blocks
  over 512 B, its byte rate in malloc's bytes in use (RSS, once tracing has settled, where
  those are unknown) (``corroboration.py``).
  Tracing sees only blocks allocated since it started, so any structure whose entries are
  replaced (a full LRU cache, a pool) seems to grow at its site until all entries are new.
* Suspicion (:meth:`Detector.suspicious`, which only turns tracing on) is judged from the
  warm-up floor on a ``suspect_window_s`` window, before the warm-up end is decided, on the
  heap level or on RSS with a low bar: the leaking site then has data when judging begins.

Settings come from :meth:`DetectionParams.from_config` (``params.py``), which documents every
value derived from the config.
"""

from soakd.detection.detector import Detector
from soakd.detection.findings import Finding, FindingState
from soakd.detection.kinds import KIND_RANK, LEAK_KINDS, LeakKind, SignalKind
from soakd.detection.params import DetectionParams
from soakd.detection.tracks import SampledNoise, SiteInfo

__all__ = [
    "KIND_RANK",
    "LEAK_KINDS",
    "DetectionParams",
    "Detector",
    "Finding",
    "FindingState",
    "LeakKind",
    "SampledNoise",
    "SignalKind",
    "SiteInfo",
]
