"""How a time is read: blocks of back-to-back calls, the device drained at both ends."""

from __future__ import annotations

import statistics
import time

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_block(fn, steps: int, device) -> float:
    """Seconds per call over `steps` back-to-back calls; the queue is drained at both ends,
    so the host may run ahead inside the block exactly as in training."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / steps


def time_step(fns: dict, *, warmup: int, repeats: int, steps: int, device) -> dict[str, list[float]]:
    """Seconds per call of each fn, one entry per repeat. Several fns are interleaved
    (a block of each per repeat) so slow drift (clocks, thermals, neighbours) hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(time_block(fn, steps, device))
    return times


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median of per-repeat ratios: paired, so drift between repeats cancels."""
    return statistics.median(a / b for a, b in zip(num, den))
