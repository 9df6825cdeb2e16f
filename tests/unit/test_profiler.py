"""The sampled allocation profiler (soakd._profiler through soakd.profiler).

Statistical tests are sized so that a correct profiler fails them with a negligible probability
(each says how); nothing sleeps.
"""

from __future__ import annotations

import gc
import math
import os
import random
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from soakd import profiler
from soakd.profiler import SampledProfiler, StackEstimate, confidence_interval

pytestmark = pytest.mark.skipif(
    not profiler.AVAILABLE, reason=f"sampled profiler unavailable: {profiler.UNAVAILABLE_REASON}"
)

SMALL = 16 * 1024  # a small interval keeps each trial quick


@pytest.fixture
def prof() -> Iterator[SampledProfiler]:
    p = SampledProfiler()
    p.stop()
    yield p
    p.stop()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
    p.stop()  # tracemalloc.stop() may have put back a pass-through profiler


# -- allocation sites: one line each, found by (file, line) in the snapshot ----------------------


def _alloc(n: int, size: int) -> list[bytes | None]:
    keep: list[bytes | None] = [None] * n  # preallocated: the list is not part of the truth
    for i in range(n):
        keep[i] = bytes(size)  # SITE_A
    return keep


def _alloc_b(n: int, size: int) -> list[bytes | None]:
    keep: list[bytes | None] = [None] * n
    for i in range(n):
        keep[i] = bytes(size)  # SITE_B
    return keep


def _alloc_c(n: int, size: int) -> list[bytes | None]:
    keep: list[bytes | None] = [None] * n
    for i in range(n):
        keep[i] = bytes(size)  # SITE_C
    return keep


def _alloc_d(n: int, size: int) -> list[bytes | None]:
    keep: list[bytes | None] = [None] * n
    for i in range(n):
        keep[i] = bytes(size)  # SITE_D
    return keep


SITES = [_alloc, _alloc_b, _alloc_c, _alloc_d]


def _site(fn: object) -> tuple[str, int]:
    return (__file__, fn.__code__.co_firstlineno + 3)  # type: ignore[attr-defined]


def _at(stacks: list[StackEstimate], site: tuple[str, int]) -> list[StackEstimate]:
    return [s for s in stacks if s.frames and s.frames[0] == site]


def _estimate(stacks: list[StackEstimate], site: tuple[str, int]) -> StackEstimate | None:
    hits = _at(stacks, site)
    assert len(hits) <= 1, hits  # one calling stack per site in these tests
    return hits[0] if hits else None


def _covered(est: StackEstimate | None, truth: float) -> bool:
    if est is None:
        return False
    low, high = est.interval95
    return low <= truth <= high


# -- accuracy ---------------------------------------------------------------------------------


def test_small_blocks_interval_covers_the_truth_in_95_percent_of_trials(
    prof: SampledProfiler,
) -> None:
    # 800 blocks of 133 B at 16 KiB: ~6.5 samples per trial. The exact interval's coverage
    # there is 97.4 % (binomial sum), so with 2000 trials a correct profiler falls below 95 %
    # with probability < 1e-9, and a biased or too narrow one cannot pass.
    prof.start(interval=SMALL, frames=4)
    n, size = 800, 100
    truth = n * sys.getsizeof(bytes(size))
    site = _site(_alloc)
    trials, covered, errors = 2000, 0, []
    for _ in range(trials):
        keep = _alloc(n, size)
        est = _estimate(prof.snapshot(), site)
        covered += _covered(est, truth)
        errors.append((est.est_bytes if est else 0.0) / truth - 1)
        del keep
    assert covered / trials >= 0.95
    # Unbiased: the mean relative error's standard error is ~0.4/sqrt(2000) = 0.009.
    assert abs(sum(errors) / trials) < 0.05


def test_large_blocks_are_estimated_almost_exactly(prof: SampledProfiler) -> None:
    # Blocks of 64 KiB > interval: p = 0.98, so the estimate is near exact and the interval
    # narrow; its coverage here is 99.5 % (300 trials: below 95 % has probability < 1e-9).
    prof.start(interval=SMALL, frames=4)
    n, size = 20, 64 * 1024
    truth = n * sys.getsizeof(bytes(size))
    site = _site(_alloc)
    covered = 0
    for _ in range(300):
        keep = _alloc(n, size)
        est = _estimate(prof.snapshot(), site)
        assert est is not None
        low, high = est.interval95
        assert high - low < 0.5 * truth
        assert abs(est.est_bytes / truth - 1) < 0.25
        covered += low <= truth <= high
        del keep
    assert covered / 300 >= 0.95


def _buffers(n: int, size: int) -> list[bytes | None]:
    keep: list[bytes | None] = [None] * n
    for i in range(n):
        keep[i] = bytes(size)  # large blocks: sampled almost surely
    return keep


def test_churn_counts_variance_terms_small_blocks_full_large_ones_almost_none(
    prof: SampledProfiler,
) -> None:
    # A growth's variance between snapshots comes from the churn: a small block sampled now and
    # then stands for a whole interval (w²), a block far larger than the interval is sampled
    # almost surely and adds next to no noise, however often it is reallocated.
    prof.start(interval=SMALL, frames=4)
    small = _estimate_of(prof, _alloc, lambda: _alloc(20_000, 100))
    assert small.sampled > 50
    w_small = small.est_bytes / small.sampled  # about the interval
    assert 0.95 * w_small**2 < small.alloc_w2 / small.sampled <= w_small**2  # w²(1 - p)
    large = _estimate_of(prof, _buffers, lambda: _buffers(50, 40 * SMALL))
    assert large.sampled == 50
    w = large.est_bytes / large.sampled
    assert large.alloc_w2 < 1e-6 * 50 * w * w  # p = 1 - e^-40: no noise


def _estimate_of(prof: SampledProfiler, fn: object, make: Callable[[], object]) -> StackEstimate:
    keep = make()
    est = _estimate(prof.snapshot(), _site(fn))
    assert est is not None
    del keep
    return est


def test_freed_blocks_leave_the_estimate(prof: SampledProfiler) -> None:
    prof.start(interval=SMALL, frames=4)
    site = _site(_alloc)
    keep = _alloc(20_000, 100)  # ~160 samples: certainly present
    est = _estimate(prof.snapshot(), site)
    assert est is not None and est.sampled > 50
    assert est.alloc_w2 > 0 and est.free_w2 == 0
    del keep
    gc.collect()
    assert _estimate(prof.snapshot(), site) is None
    assert prof.stats().frees_seen >= est.sampled


def test_every_sampled_free_is_seen_across_growth_and_address_reuse(prof: SampledProfiler) -> None:
    """Frees are screened by a bitmap before the table is probed: a free of a sampled block
    must never be screened out, whatever the order of frees and however addresses are reused
    (pymalloc hands a freed address straight back out) or the table grows meanwhile."""
    prof.start(interval=4096, frames=1, seed=7)
    site = _site(_alloc)
    rng = random.Random(3)
    keep = _alloc(30_000, 100)  # ~750 samples: the table grows twice on the way
    for _ in range(3):
        order = list(range(len(keep)))
        rng.shuffle(order)
        for i in order[: len(order) // 2]:
            keep[i] = None
        refill = _alloc(len(order) // 2, 100)  # reuses the freed addresses
        keep = [b for b in keep if b is not None] + refill
    live = _estimate(prof.snapshot(), site)
    assert live is not None
    before = prof.stats()
    del keep, refill
    gc.collect()
    after = prof.stats()
    assert _estimate(prof.snapshot(), site) is None  # every sampled block's free was seen
    assert after.frees_seen - before.frees_seen >= live.sampled


def _alloc_in_thread(
    fn: object, n: int, size: int, barrier: threading.Barrier, out: dict[object, object]
) -> None:
    barrier.wait()  # all four allocate at once, interleaved by the GIL
    out[fn] = fn(n, size)  # type: ignore[operator]


def test_threads_each_line_within_its_interval(prof: SampledProfiler) -> None:
    # 4 threads allocate at 4 lines at once. Each line's interval covers its truth with
    # probability ~0.97 per round; over 25 rounds, fewer than 20 hits at a line has
    # probability < 1e-4 for a correct profiler.
    prof.start(interval=SMALL, frames=4)
    n, size = 800, 100
    truth = n * sys.getsizeof(bytes(size))
    hits = dict.fromkeys(SITES, 0)
    for _ in range(25):
        kept: dict[object, list[bytes | None]] = {}
        barrier = threading.Barrier(len(SITES))
        threads = [
            threading.Thread(target=_alloc_in_thread, args=(fn, n, size, barrier, kept))
            for fn in SITES
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stacks = prof.snapshot()
        for fn in SITES:
            hits[fn] += _covered(_estimate(stacks, _site(fn)), truth)
        kept.clear()
    assert all(h >= 20 for h in hits.values()), hits


def test_confidence_interval_edges() -> None:
    assert confidence_interval(0.0, 0.0, 0.0, 0) == (0.0, 0.0)
    # every block sampled with p = 1: exact
    assert confidence_interval(1000.0, 10.0, 0.0, 10) == (1000.0, 1000.0)
    # one sample of a small block: Garwood-like, wide and right-skewed
    low, high = confidence_interval(16384.0, 128.0, 16384.0**2, 1)
    assert low < 0.05 * 16384 and 5 * 16384 < high < 6 * 16384
    # many samples: normal on the variance
    low, high = confidence_interval(1e9, 1e6, 1e14, 5000)
    assert (low, high) == pytest.approx((1e9 - 1.96 * 1e7, 1e9 + 1.96 * 1e7), rel=1e-3)


# -- snapshot shape -----------------------------------------------------------------------------


def _nest(depth: int) -> list[bytes | None]:
    if depth == 0:
        return _alloc(2000, 100)
    return _nest(depth - 1)


def test_snapshot_frames_innermost_first_limited_and_cached(prof: SampledProfiler) -> None:
    prof.start(interval=SMALL, frames=3)
    keep = _nest(10)
    stacks = _at(prof.snapshot(), _site(_alloc))
    assert len(stacks) == 1
    frames = stacks[0].frames
    assert len(frames) == 3
    assert frames[0] == _site(_alloc)
    assert all(f == __file__ and isinstance(n, int) for f, n in frames)
    again = _at(prof.snapshot(), _site(_alloc))[0]
    assert again.frames is frames  # cached per stack, not rebuilt
    st = prof.stats()
    assert st.running and st.installed and st.chained and st.interval == SMALL
    assert st.frames == 3 and st.live_blocks >= stacks[0].sampled
    del keep


# -- bounds ---------------------------------------------------------------------------------------


def test_full_block_table_drops_and_counts_with_stable_memory(prof: SampledProfiler) -> None:
    prof.start(interval=1024, frames=4, max_blocks=64)
    memory = []
    kept = []
    for _ in range(5):
        kept.append(_alloc(5000, 100))  # ~650 samples each, all kept alive
        st = prof.stats()
        assert st.live_blocks <= 64
        memory.append(st.memory_bytes)
    st = prof.stats()
    assert st.dropped_blocks > 1000 and st.dropped_bytes > 0
    assert memory[1:] == memory[:-1]  # the table stopped growing at its bound
    del kept


def test_full_stack_table_goes_to_the_overflow_stack(prof: SampledProfiler) -> None:
    prof.start(interval=1024, frames=16, max_stacks=4)
    keep = [_nest(d) for d in range(12)]  # 12 distinct stacks at the same line
    st = prof.stats()
    assert st.stacks <= 4 and st.overflow_samples > 0
    overflow = [s for s in prof.snapshot() if s.frames == (("<profiler: stack table full>", 0),)]
    assert len(overflow) == 1 and overflow[0].est_bytes > 0
    del keep


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0},
        {"frames": 0},
        {"frames": 129},
        {"max_blocks": 0},
        {"max_stacks": 0},
        {"seed": 0},
    ],
)
def test_start_rejects_bad_values(prof: SampledProfiler, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        prof.start(**kwargs)
    assert not prof.running


def test_start_without_the_extension_says_why(
    prof: SampledProfiler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiler, "_ext", None)
    monkeypatch.setattr(profiler, "UNAVAILABLE_REASON", "extension soakd._profiler not built: x")
    with pytest.raises(RuntimeError, match="not built: x"):
        prof.start()
    assert not prof.running and prof.snapshot() == []


# -- lifecycle ----------------------------------------------------------------------------------


def test_stop_start_cycles_restore_the_allocator(prof: SampledProfiler) -> None:
    for i in range(20):
        prof.start(interval=SMALL, frames=4, seed=i + 1)
        keep = _alloc(4000, 100)
        assert _estimate(prof.snapshot(), _site(_alloc)) is not None
        prof.stop()
        st = prof.stats()
        assert not st.running and not st.installed and not st.chained
        assert st.live_blocks == 0 and st.stacks == 0 and st.memory_bytes == 0
        assert prof.snapshot() == []
        del keep


def test_start_is_idempotent_and_restarts_on_new_settings(prof: SampledProfiler) -> None:
    prof.start(interval=SMALL, frames=4)
    keep = _alloc(4000, 100)
    prof.start(interval=SMALL, frames=4)  # same settings: samples kept
    assert _estimate(prof.snapshot(), _site(_alloc)) is not None
    prof.start(interval=2 * SMALL, frames=4)  # new settings: a fresh start
    assert prof.stats().interval == 2 * SMALL
    assert _estimate(prof.snapshot(), _site(_alloc)) is None
    del keep


def test_clear_forgets_samples_and_keeps_sampling(prof: SampledProfiler) -> None:
    prof.start(interval=SMALL, frames=4)
    keep = _alloc(4000, 100)
    assert prof.stats().sampled >= 5  # 400 kB at 16 KiB
    prof.clear()
    # Counters first: building the snapshot's Python objects allocates, and may be sampled;
    # so may the interpreter's own allocations on the way to stats() (rarely, one).
    after = prof.stats()
    assert after.sampled <= 1 and after.live_blocks <= 1
    assert _estimate(prof.snapshot(), _site(_alloc)) is None
    del keep  # frees of forgotten blocks are not found: nothing breaks
    keep = _alloc(4000, 100)
    assert prof.running and _estimate(prof.snapshot(), _site(_alloc)) is not None
    del keep


def test_fork_child_stops_parent_unaffected(prof: SampledProfiler) -> None:
    prof.start(interval=SMALL, frames=4)
    keep = _alloc(4000, 100)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any cleanup
        try:
            st = prof.stats()
            os.write(write, f"{int(prof.running)} {int(st.installed)} {st.live_blocks}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        reported = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reported == "0 0 0"
    assert prof.running
    assert _estimate(prof.snapshot(), _site(_alloc)) is not None
    del keep


# -- with tracemalloc -----------------------------------------------------------------------------


def _traced_at(site: tuple[str, int]) -> int:
    snap = tracemalloc.take_snapshot()
    return sum(
        t.size for t in snap.traces if (t.traceback[0].filename, t.traceback[0].lineno) == site
    )


def _both_see(prof: SampledProfiler, fn: object = _alloc) -> None:
    keep = fn(20_000, 100)  # type: ignore[operator]
    site = _site(fn)
    assert _traced_at(site) >= 20_000 * sys.getsizeof(bytes(100))
    est = _estimate(prof.snapshot(), site)
    assert est is not None and est.sampled > 50
    del keep


def test_tracemalloc_started_before_profiler(prof: SampledProfiler) -> None:
    tracemalloc.start(1)
    prof.start(interval=SMALL, frames=4)
    _both_see(prof)
    # Stopping the profiler (on top) hands the allocator back to tracemalloc.
    prof.stop()
    assert not prof.stats().chained
    keep = _alloc_b(2000, 100)
    assert _traced_at(_site(_alloc_b)) >= 2000 * sys.getsizeof(bytes(100))
    del keep
    # Start again, then stop tracemalloc: it restores the allocator it found, dropping ours.
    prof.start(interval=SMALL, frames=4)
    tracemalloc.stop()
    st = prof.stats()
    assert not prof.running and not st.chained
    assert prof.reinstall()
    assert prof.running and prof.stats().installed
    assert not prof.reinstall()  # already in: nothing to do
    keep = _alloc_c(20_000, 100)
    assert _estimate(prof.snapshot(), _site(_alloc_c)) is not None
    del keep


def test_tracemalloc_started_after_profiler(prof: SampledProfiler) -> None:
    prof.start(interval=SMALL, frames=4)
    tracemalloc.start(1)
    st = prof.stats()
    assert st.running and not st.installed and st.chained  # under tracemalloc, still sampling
    _both_see(prof)
    # Stopping the profiler under tracemalloc: it stays chained, passing through.
    prof.stop()
    st = prof.stats()
    assert st.passthrough and not st.running and st.live_blocks == 0
    keep = _alloc_b(20_000, 100)
    assert _traced_at(_site(_alloc_b)) >= 20_000 * sys.getsizeof(bytes(100))
    assert prof.snapshot() == []
    del keep
    # Restarting re-enables it in place, under tracemalloc.
    prof.start(interval=SMALL, frames=4)
    _both_see(prof, _alloc_c)
    # tracemalloc.stop() puts our hooks back on top: the profiler keeps working.
    tracemalloc.stop()
    st = prof.stats()
    assert st.running and st.installed
    keep = _alloc_d(20_000, 100)
    assert _estimate(prof.snapshot(), _site(_alloc_d)) is not None
    prof.stop()
    assert not prof.stats().chained
    del keep


# -- robustness -----------------------------------------------------------------------------------


class _Finalized:
    def __del__(self) -> None:
        self.garbage = [object() for _ in range(3)]  # allocates inside a collection


def _gen(n: int) -> Iterator[dict[str, object]]:
    for i in range(n):
        try:
            yield {"i": i, "s": str(i) * 3}
        finally:
            pass


def _churn() -> None:
    for _ in range(30):
        items = list(_gen(20))
        try:
            raise ValueError("x" * 100)
        except ValueError as exc:
            text = str(exc)
        ring = [_Finalized() for _ in range(5)]
        ring[0].ring = ring  # type: ignore[attr-defined]  # a cycle with finalizers
        del ring, items, text
        grown = bytearray()
        for _ in range(50):
            grown.extend(b"y" * 100)  # realloc
        gc.collect(0)


def test_sampling_every_allocation_survives_generators_exceptions_gc_threads(
    prof: SampledProfiler,
) -> None:
    # interval 1: every allocation takes the sample path, in frame teardown, exceptions, GC
    # finalizers and several threads.
    prof.start(interval=1, frames=16, max_blocks=4096, max_stacks=256)
    threads = [threading.Thread(target=_churn) for _ in range(3)]
    for t in threads:
        t.start()
    _churn()
    for t in threads:
        t.join()
    gc.collect()
    ext = profiler._ext
    assert ext is not None
    # The raw calls, back to back: nothing is allocated (so sampled) between them.
    raw = ext.snapshot()
    live = ext.stats()["live_blocks"]
    assert sum(r[4] for r in raw) == live  # every live sample belongs to a reported stack
    st = prof.stats()
    assert st.sampled > 10_000 and st.live_blocks <= 4096 and st.stacks <= 256
    stacks = prof.snapshot()
    assert all(math.isfinite(s.est_bytes) and s.est_bytes >= 0 for s in stacks)


def test_a_new_interval_keeps_the_samples_and_their_weights(prof: SampledProfiler) -> None:
    """Zooming in keeps the profile: blocks sampled at 64 KiB keep their weights when freed
    after the interval changed, and the estimate over both stays unbiased (within 5 σ of the
    estimator's own variance: a correct profiler fails this about once in 3 million runs)."""
    prof.start(interval=64 * 1024, frames=4, seed=7)
    old = _alloc(20_000, 1000)  # 20 MB at 64 KiB: ~300 samples
    before = _estimate(prof.snapshot(), _site(_alloc))
    assert before is not None and before.sampled > 100
    assert before.coarse == 0
    assert prof.set_interval(8 * 1024) and prof.stats().interval == 8 * 1024
    # Nothing forgotten; every sample taken so far is now coarser than the interval.
    zoomed = _estimate(prof.snapshot(), _site(_alloc))
    assert zoomed == replace(before, coarse=before.sampled)
    new = _alloc_b(4000, 1000)  # 4 MB at 8 KiB: ~490 samples
    mixed = _estimate(prof.snapshot(), _site(_alloc))
    assert mixed is not None and mixed.est_bytes == before.est_bytes
    fine = _estimate(prof.snapshot(), _site(_alloc_b))
    assert fine is not None and fine.coarse == 0 and fine.sampled > 100
    half = len(old) // 2
    del old[:half]  # the coarse samples leave with their blocks
    partly = _estimate(prof.snapshot(), _site(_alloc))
    assert partly is not None and 0 < partly.coarse == partly.sampled < before.sampled
    del old  # freed after the change: removed with the weights they were added with
    assert _estimate(prof.snapshot(), _site(_alloc)) is None  # exactly gone, no residue
    after = _estimate(prof.snapshot(), _site(_alloc_b))
    assert after is not None
    assert abs(after.est_bytes - 4000 * 1000) <= 5 * math.sqrt(after.variance)
    assert prof.set_interval(64 * 1024)  # back: the earlier interval's weights are reused
    back = _estimate(prof.snapshot(), _site(_alloc_b))
    assert back is not None and back.coarse == 0  # 8 KiB samples are finer, not coarser
    del new
    assert _estimate(prof.snapshot(), _site(_alloc_b)) is None


def test_code_compiled_at_run_time_is_not_kept_alive_by_its_samples(
    prof: SampledProfiler,
) -> None:
    # A template engine compiles code per template and drops it when its cache evicts the
    # template: once the sampled blocks are freed, a snapshot lets the code object go.
    import weakref

    prof.start(interval=SMALL, frames=4)
    namespace: dict[str, object] = {}
    exec(
        compile("def make(n):\n    return [bytes(100) for _ in range(n)]\n", "<tpl>", "exec"),
        namespace,
    )
    make = namespace.pop("make")
    code = weakref.ref(make.__code__)  # type: ignore[attr-defined]
    keep = make(20_000)  # type: ignore[operator]
    assert any(s.frames and s.frames[0][0] == "<tpl>" for s in prof.snapshot())
    del keep, make, namespace
    gc.collect()
    for _ in range(2):  # the stacks whose blocks were all freed are released here
        prof.snapshot()
    assert code() is None
