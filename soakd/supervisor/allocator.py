"""The supervisor's own C allocator: few arenas, and freed pages handed back (glibc only).

The supervisor runs its samplers, analysis and checkpoints in anyio's worker threads, which come
and go (idle ones stop after 10 s). glibc gives threads their own malloc arenas, up to 8 per
core, and each keeps the high-water mark of the work that ran in it: over hours the RSS creeps
up although Python frees everything. Two arenas are plenty for a process that is mostly
asleep, and ``malloc_trim`` after each checkpoint (the biggest transient allocation: it reads
samples.db and events.jsonl) returns the free pages of every arena to the kernel.

Only the supervisor does this: the worker's allocator belongs to the target being measured.
Elsewhere than glibc (musl, macOS) both calls are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

M_ARENA_MAX = -8  # mallopt parameter, <malloc.h>
ARENAS = 2


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    # glibc only: musl has neither mallopt's M_ARENA_MAX nor a malloc_trim that does anything
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "malloc_trim"):
        return None
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before threads start); False where unsupported."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))


def trim() -> bool:
    """Return free heap pages of every arena to the kernel; False where unsupported."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True
