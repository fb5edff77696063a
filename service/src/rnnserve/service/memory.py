"""The process's allocator: large buffers go back to the system when freed.

glibc's malloc serves a large allocation with its own mapping, returned to the system on
free, but it raises that threshold (up to 32 MiB) each time such a mapping is freed, so
after one large request the buffers of the next (a received message, ORT's intermediate
tensors) come from heaps that keep their peak for the life of the process. Fixing the
threshold keeps every large buffer a mapping of its own, and trimming the heaps once they
hold TRIM_BYTES free returns the rest: resident memory comes back near its level after a
large request (ORT's own arena is off too: service/runtime.py). Elsewhere than glibc,
nothing is changed.

A message does not arrive as one large buffer, though: gRPC's core reads it in slices of
tens of KiB on its own threads (each with heaps of its own), uvicorn a body in chunks of as
much, all below the threshold. Freed, they stay resident (a heap is only trimmed at its
top): 32 refused requests of 58.6 MiB left 1.5 GB behind. So the memory budget gives them
back with `give_back` (glibc's malloc_trim, which returns every free page of every heap)
each time TRIM_BYTES of requests and messages were released (service/dataplane/budget.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 1024 * 1024  # buffers from 1 MiB up: a mapping each, unmapped when freed
TRIM_BYTES = 16 * 1024 * 1024  # free memory a heap may keep at its top


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not all(hasattr(libc, f) for f in ("mallopt", "malloc_trim", "gnu_get_libc_version")):
        return None
    return libc


def return_large_buffers() -> None:
    """Sets glibc's malloc to give large buffers back (see above); a no-op elsewhere."""
    libc = _glibc()
    if libc is None:
        return
    if not (
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)
    ):
        log.debug("mallopt refused: large buffers may stay resident after use")


def give_back() -> None:
    """Returns the free pages of every heap to the system (a no-op elsewhere than glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
