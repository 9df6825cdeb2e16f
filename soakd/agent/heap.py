"""Cheap Python-heap numbers, sampled every couple of seconds without pausing the target.

``heap_bytes`` is the Python heap level:
- while tracemalloc traces, the bytes it traces (exact, but only for allocations made since
  tracing started: the series steps when tracing starts or stops — compare within one segment);
- otherwise an estimate, ``sys.getallocatedblocks()`` × the mean block size measured the last
  time traces were grouped (``DEFAULT_MEAN_BLOCK`` before that). It moves with the number of
  Python blocks, so it follows object leaks well but understates leaks of few large buffers.
  ``mallinfo2`` was rejected for it: it also counts native ``malloc`` (the very thing a
  "native" verdict must tell apart) and misses pymalloc's mmap'd arenas.
``heap_estimated`` says which of the two a sample is (1.0 = estimate).

``malloc_bytes`` (glibc only: ``mallinfo2``) is what ``malloc`` has handed out and not got
back: Python objects over 512 bytes, tracemalloc's tables, native allocations. It corroborates
an allocation site whose blocks are large (few blocks, many bytes): unlike RSS it does not
climb with the high-water mark of the agent's groupings, which are small pymalloc objects.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import tracemalloc
from collections.abc import Callable

from soakd.agent.protocol import HeapSample

__all__ = ["DEFAULT_MEAN_BLOCK", "HeapSampler"]

# Typical CPython 3.11 mean over a service's live blocks (measured: 60–120 B).
DEFAULT_MEAN_BLOCK = 80.0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (2.33+), or None elsewhere (musl, macOS, older glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    func.restype = _MallInfo2
    func.argtypes = []
    return func


class HeapSampler:
    """Heap level, block count, malloc's bytes, tracemalloc's own cost and gc state.

    ~0.1 ms per call, plus ``mallinfo2``'s walk of malloc's free lists (measured: 12 ms with
    100k free chunks; far less in a usual heap)."""

    def __init__(self) -> None:
        self.mean_block = DEFAULT_MEAN_BLOCK
        self.calibrated = False
        self._mallinfo = _mallinfo2()

    def calibrate(self, traced_bytes: int, blocks: int) -> None:
        """Remember the mean block size seen in a full copy of the traces."""
        if blocks > 1000 and traced_bytes > 0:
            self.mean_block = traced_bytes / blocks
            self.calibrated = True

    def sample(self) -> HeapSample:
        blocks = sys.getallocatedblocks()
        tracing = tracemalloc.is_tracing()
        traced = tracemalloc.get_traced_memory()[0] if tracing else 0
        overhead = tracemalloc.get_tracemalloc_memory()
        garbage = len(gc.garbage)
        collections = sum(s["collections"] for s in gc.get_stats())
        malloc_bytes = None
        if self._mallinfo is not None:
            info = self._mallinfo()
            malloc_bytes = float(info.uordblks + info.hblkhd)  # heap chunks + mmap'd
        return HeapSample(
            heap_bytes=float(traced) if tracing else blocks * self.mean_block,
            heap_estimated=0.0 if tracing else 1.0,
            heap_blocks=float(blocks),
            traced_bytes=float(traced),
            tracemalloc_overhead_bytes=float(overhead),
            gc_garbage=float(garbage),
            gc_collections=float(collections),
            malloc_bytes=malloc_bytes,
        )
