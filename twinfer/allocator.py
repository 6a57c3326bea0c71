"""glibc heap thresholds for processes that decode pictures (workers, model validation).

Why fixed thresholds: glibc adapts its mmap and trim thresholds to the sizes it has seen
freed, and both extremes cost us.

* Left adaptive, the mmap threshold climbs to the largest block freed so far (up to
  32 MiB), so after one big picture every later buffer up to that size comes from the
  heap, which keeps its high-water mark: a few requests declaring large JPEGs left each
  worker 25-55 MiB bigger for good (``tests/workers/test_fuzz.py``).
* Fixing only the mmap threshold (``mallopt`` turns the adaptation off) leaves the trim
  threshold at 128 KiB: each request's freed buffers (the decoded picture, the float input,
  the model's 4.6 MB output array) were handed back to the kernel after every request
  (``madvise(MADV_DONTNEED)``, two calls a request) and faulted in and zeroed again by the
  next: ~670 page faults and ~1-2 ms of kernel time per 640x480 request, 8.8 % of a
  worker's CPU against 1.2 % for a Flask + gunicorn worker doing the same work.

So: buffers up to ``MMAP_THRESHOLD`` (every everyday request's, a 1080p picture decoded
whole is 6.2 MB) come from the heap and its freed top is kept up to ``TRIM_THRESHOLD``
for the next request; anything bigger is mapped and unmapped, so a huge picture leaves
nothing behind. An operator who sets glibc's own variables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``glibc.malloc.*`` in ``GLIBC_TUNABLES``) keeps them.
"""
from __future__ import annotations

import ctypes
import os
from typing import Mapping

M_TRIM_THRESHOLD = -1  # <malloc.h> mallopt parameters
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024
OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def operator_tuned(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the operator set glibc's malloc thresholds themselves."""
    return any(environ.get(name) for name in OPERATOR_VARIABLES) or "glibc.malloc." in environ.get(
        "GLIBC_TUNABLES", ""
    )


def tune_heap(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set both thresholds for every arena of this process; False (nothing changed) where
    the operator tuned malloc or the C library has no ``mallopt`` (musl)."""
    if operator_tuned():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
