"""The C library, for the few calls Python's standard library does not make (glibc's; None where
it cannot be loaded, and what needs it does without)."""

from __future__ import annotations

import ctypes
import ctypes.util

try:
    libc: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:
    libc = None
