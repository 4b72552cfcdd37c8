"""Freed memory kept for reuse: the C allocator's large blocks on the CPU.

glibc hands a freed block above its mmap threshold (128 KiB, raised as blocks are
freed) back to the system, and the next block of that size is mapped again and faulted
in, zeroed, one 4 KiB page at a time. A training step frees and allocates the same
activation-sized blocks every step, so on the CPU each step pays hundreds to thousands
of page faults, and a method that adds a few allocations (WC) changes which blocks are
reused and pays several times more (results/bench/README.md: 377-666 faults per step of
the plain occupancy MLP, 2,251-3,965 with WC). With the mmap threshold at glibc's
largest (32 MiB) and the trim threshold out of reach, freed blocks stay in the heap
and the same steps take almost none. The arithmetic is untouched (the same results, bit
for bit); the process keeps its peak memory instead of returning it between steps.
PyTorch's CPU performance guide gets the same from jemalloc or tcmalloc.

`wcnorm train` and `wcnorm bench` keep freed memory for CPU work unless the
environment says WCNORM_MALLOC=system (glibc's own behaviour; also what a preloaded
allocator wants).
"""

from __future__ import annotations

import ctypes
import os

from ..errors import ConfigError

ENV = "WCNORM_MALLOC"
CHOICES = ("keep", "system")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc's malloc.h)
MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest threshold glibc accepts on 64-bit systems
TRIM_NEVER = 2**31 - 1  # the heap's top is never given back


def malloc_choice() -> str:
    """WCNORM_MALLOC, checked: keep (the default) or system."""
    choice = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if choice not in CHOICES:
        raise ConfigError(f"{ENV}={os.environ[ENV]!r}: choose keep (freed memory kept for reuse, the "
                          f"default) or system (the C library's own behaviour)")
    return choice


def keep_freed_memory() -> bool:
    """Keep freed blocks up to 32 MiB in the heap, as WCNORM_MALLOC says; whether the C
    library took it (False: WCNORM_MALLOC=system, or a C library without glibc's mallopt)."""
    if malloc_choice() == "system":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # not glibc (macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_NEVER))
