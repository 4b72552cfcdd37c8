"""How peak memory is read: CUDA's allocator statistics, or the process's RSS on CPU."""

from __future__ import annotations

import ctypes
import gc
import math
import os
import threading
from contextlib import contextmanager

import torch

from .timing import sync

SAMPLE_S = 0.002  # the RSS sampling period on CPU


def _rss() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return math.nan


@contextmanager
def peak_memory(device):
    """Yields a dict that holds, on exit, the peak memory (MiB) inside the block and how it
    was read: CUDA's max_memory_allocated (absolute), or on CPU the peak RSS above the RSS
    at entry, sampled every SAMPLE_S by a thread (approximate: freed memory the allocator
    kept from earlier work is reused without showing up)."""
    out = {}
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        sync(device)
        out.update(mib=torch.cuda.max_memory_allocated(device) / 2**20, how="cuda max_memory_allocated")
        return
    try:  # hand freed heap back to the OS so the delta sees this block's allocations
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    base, peak, done = _rss(), [_rss()], threading.Event()

    def sample():
        while not done.wait(SAMPLE_S):
            peak[0] = max(peak[0], _rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out.update(mib=max(0.0, max(peak[0], _rss()) - base) / 2**20, how="CPU peak RSS delta (sampled)")


def free(device) -> None:
    """Drop what a finished measurement left (its loaders, models, cached blocks)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
