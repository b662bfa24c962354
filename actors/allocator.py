"""Keep freed heap memory in a training process instead of handing it back to the OS.

PyTorch's CPU tensors come from the C allocator (glibc ``malloc`` on Linux). A training step
allocates and frees the same activation buffers again and again; by default glibc returns the
freed top of its heap to the kernel (``M_TRIM_THRESHOLD`` 128 KiB, adjusted on the fly) and
serves large blocks by ``mmap``, so the next step faults the same pages in again and the kernel
zeroes them. On the reference VM that was 1,000-6,500 page faults per client fit of
``fedrs-tiny`` (4-25 MB re-zeroed), worse with two trainers side by side (see
``benchmarks/README.md``). A client actor lives for the whole run and reuses the same sizes
every step, so it keeps what it frees: its resident memory stays at its peak instead of
shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 1 << 30  # never give the heap's free top back (below 1 GiB)
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time
MMAP_THRESHOLD = 32 << 20  # glibc's maximum: blocks below 32 MiB come from the heap


def retain_freed_memory() -> bool:
    """Tune glibc ``malloc`` of this process so freed memory is reused, not returned.

    Returns True when every setting was accepted; False where the C library is not glibc (macOS,
    musl) or refused a value, in which case nothing else changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("no mallopt in this C library; allocator left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: setting it also turns off glibc's dynamic adjustment of both
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_TOP_PAD, TOP_PAD),
    )
    ok = all(mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        log.warning("glibc refused a malloc setting; freed memory may still go back to the OS")
    return ok
