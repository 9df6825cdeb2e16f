"""The supervisor's allocator settings: available on glibc, harmless elsewhere."""

from __future__ import annotations

import ctypes
import sys

import pytest

from soakd.supervisor.allocator import limit_arenas, trim

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")


@pytest.mark.skipif(not GLIBC, reason="glibc only: mallopt(M_ARENA_MAX) and malloc_trim")
def test_arena_cap_and_trim_take_effect_on_glibc() -> None:
    assert limit_arenas(8) is True  # the test process keeps glibc's default-ish cap
    assert trim() is True
