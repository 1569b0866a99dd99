"""Giving freed memory back to the system after a burst of allocations.

A statistics pull parses (dispatcher) or builds (relay) a listing of every session once a minute.
What it allocated is freed at once, but the C allocator keeps the pages for reuse, so the
process's RSS stays at that minute's high-water mark; at 4,000 sessions that was about as much as
the sessions themselves held. ``malloc_trim`` returns those free pages (glibc; elsewhere nothing
is done).
"""

from __future__ import annotations

import ctypes

from mediaproxy.runtime.libc import libc

_trim = getattr(libc, "malloc_trim", None)
if _trim is not None:
    _trim.argtypes = [ctypes.c_size_t]
    _trim.restype = ctypes.c_int


def give_back() -> None:
    """Return the allocator's free pages to the system: about 5 ms on a heap of a few hundred MB
    with much of it free, so after bursts only."""
    if _trim is not None:
        _trim(0)
