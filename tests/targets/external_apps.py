"""Programs soakd watches from outside (``soakd run -- CMD`` / ``--pid``). Run as scripts.

python external_apps.py native KB_PER_S   # malloc + memset, never freed: RSS grows, no Python heap
python external_apps.py fds N_PER_S       # opens /dev/null and keeps it
python external_apps.py heap KB_PER_S     # a Python heap leak at one line (asyncio service)
python external_apps.py idle              # allocates nothing
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import time

KEEP: list[object] = []


def native(kb: int) -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    while True:
        ptr = libc.malloc(kb * 1024)
        ctypes.memset(ptr, 1, kb * 1024)  # touch it: RSS, not just address space
        time.sleep(0.1)


def fds(n: int) -> None:
    while True:
        KEEP.append(os.open("/dev/null", os.O_RDONLY))
        time.sleep(1.0 / n)


async def heap(kb: int) -> None:
    while True:
        KEEP.append(bytearray(kb * 1024 // 10))  # the heap leak site
        await asyncio.sleep(0.1)


def main() -> None:
    mode = sys.argv[1]
    arg = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    print(f"ready {os.getpid()}", flush=True)
    if mode == "native":
        native(max(1, arg // 10))
    elif mode == "fds":
        fds(arg)
    elif mode == "heap":
        asyncio.run(heap(arg))
    else:
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
