"""WC's overhead on the occupancy MLP (4 x 256, 4,096 points, Adam, one thread) with
glibc's default allocator and with large blocks kept in the heap, interleaved steps.

    python scripts/allocator_probe.py                                   # glibc's defaults
    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
        python scripts/allocator_probe.py                               # no mmap/munmap of large blocks

Prints one CSV row: the allocator setting, the median step without and with WC (ms),
their ratio, and the page faults each step takes on average without and with WC (the
process's minor faults, exact at any load: a freshly mapped page is faulted in, zeroed,
the first time it is touched) (results/bench/README.md, "Where WC's step time goes").
"""

import os
import resource
import statistics
import time

import torch
from torch import nn

import wcnorm
from wcnorm.models.coordinate_mlps import OccupancyMLP

torch.set_num_threads(1)
torch.set_flush_denormal(True)
torch.manual_seed(0)
points = torch.rand(4096, 3) * 2 - 1
inside = (points.norm(dim=1) < 0.6).float()


def make(wc: bool):
    model = OccupancyMLP(depth=4, width=256)
    if wc:
        model = wcnorm.weight_conditioning(model)
    return model, torch.optim.Adam(model.parameters(), 1e-3, foreach=True)


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def step(model, optimizer) -> tuple[float, int]:
    """(seconds, page faults) of one training step."""
    start, faulted = time.perf_counter(), faults()
    loss = nn.functional.binary_cross_entropy_with_logits(model(points).squeeze(-1), inside)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, faults() - faulted


runs = {wc: make(wc) for wc in (False, True)}
for run in runs.values():
    for _ in range(5):
        step(*run)
times, faulted = {wc: [] for wc in runs}, {wc: 0 for wc in runs}
for _ in range(80):  # interleaved: both see the same machine
    for wc, run in runs.items():
        seconds, n = step(*run)
        times[wc].append(seconds)
        faulted[wc] += n
none, with_wc = (statistics.median(times[wc]) * 1e3 for wc in (False, True))
setting = "mmap_threshold=" + os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default")
print(f"{setting},{none:.2f},{with_wc:.2f},{with_wc / none:.3f},{faulted[False] / 80:.1f},{faulted[True] / 80:.1f}")
