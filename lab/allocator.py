"""The C allocator's handling of large freed blocks, for steps that allocate
and free the same large tensors every step.

glibc's malloc serves blocks above its mmap threshold (128 KiB, raised
dynamically up to the size of the largest block freed so far) with fresh
``mmap`` pages and returns them to the kernel on ``free``; a fresh page costs a
page fault and the kernel's zeroing on first touch. A step of 8 stacked seeds
of a 784-1000-10 net allocates a 25 MB gradient every step: with the default
thresholds that gradient's page faults took half the step's matrix product
here (18.7 of 23 ms), and one seed's 784-1000-10 Adagrad step takes ~1.25x
as long with the default thresholds as without. Raising the mmap threshold to glibc's maximum (32 MiB on
64-bit) and the trim threshold beyond any step keeps freed blocks in the heap
for the next step (``mallopt``, documented in mallopt(3); the same as the
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables,
set here because a run cannot set its own environment before it starts).
Memory freed stays reserved by the process for reuse; numbers are unchanged.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20
"""glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: blocks above it are always mmapped."""
TRIM_THRESHOLD = 2**30


def keep_freed_blocks() -> bool:
    """Ask glibc to keep freed blocks up to 32 MiB for reuse (see the module
    docstring); False where the C library is not glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
