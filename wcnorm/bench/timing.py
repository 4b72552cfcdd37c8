"""How a time is read: blocks of back-to-back calls, the device drained at both ends.

The clock is the wall clock, or with `--clock cpu` the CPU time of the calling thread
(`time.thread_time`): on a CPU shared with other jobs, the wall clock also counts the
time the process waits for a core, which swings with the neighbours' load; the thread's
CPU time counts its own work only. It is what the step costs when the torch work runs
in that thread (`--threads 1`; the CPU only).
"""

from __future__ import annotations

import statistics
import time

import torch

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = {"now": time.perf_counter}


def use_clock(name: str) -> None:
    """Read every later time with the `name` clock (see the module docstring)."""
    _clock["now"] = CLOCKS[name]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn, steps: int, device) -> float:
    """Seconds per call over `steps` back-to-back calls; the queue is drained at both ends,
    so the host may run ahead inside the block exactly as in training."""
    now = _clock["now"]
    sync(device)
    t0 = now()
    for _ in range(steps):
        fn()
    sync(device)
    return (now() - t0) / steps


def time_step(fns: dict, *, warmup: int, repeats: int, steps: int, device) -> dict[str, list[float]]:
    """Seconds per call of each fn, one entry per repeat. Several fns are interleaved
    (a block of each per repeat) so slow drift (clocks, thermals, neighbours) hits all
    alike, and the order turns by one each repeat, so each fn runs after each other one
    equally often: a block's time also depends on what ran before it (caches)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    keys = list(fns)
    times = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[k].append(time_block(fns[k], steps, device))
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median of per-repeat ratios: paired, so drift between repeats cancels."""
    return statistics.median(a / b for a, b in zip(num, den))
