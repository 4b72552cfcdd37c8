"""The ENorm cycle replayed as one CUDA graph.

A cycle is a few hundred (ResNet-18) to a few thousand (DenseNet-121) small kernels that
read each weight once: on a GPU its time is expected to be the host's time to launch
them rather than the device's to run them. Captured once into a `torch.cuda.CUDAGraph`,
the whole cycle is one launch. Capture records fixed addresses, so the graph is captured again whenever a weight
or optimizer-state tensor is reallocated (an optimizer's first step creates its momentum
buffers, `load_state_dict` replaces them, `model.to()` moves the weights); the cycles
before each capture run eagerly, on a side stream, as the warm-up CUDA graphs want.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


class CycleGraph:
    """`graph()` runs `cycle()` (in place, no host sync) through a CUDA graph.

    `tensors()` lists every tensor the cycle reads or writes; their addresses are the
    graph's key, and the first's device is where the graph lives (not necessarily the
    current device). `prepare()` runs on the current stream whenever the key changes,
    before anything else: the cycle's own long-lived tensors (index maps) are made there,
    not on the warm-up stream. The first `warmup` (>= 1) calls after a change run eagerly."""

    def __init__(self, cycle: Callable[[], None], tensors: Callable[[], list[Tensor]], warmup: int = 2,
                 prepare: Callable[[], None] = lambda: None):
        if warmup < 1:
            raise ValueError("CycleGraph: warmup must be >= 1 (the capture cannot copy from the host)")
        self.cycle, self.tensors, self.warmup, self.prepare = cycle, tensors, warmup, prepare
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key, self.eager_left, self.captures = None, warmup, 0

    def _on_side_stream(self, fn: Callable[[], None], device: torch.device) -> None:
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream(device).wait_stream(side)

    def __call__(self) -> None:
        tensors = self.tensors()
        device = tensors[0].device
        key = tuple(t.data_ptr() for t in tensors)
        # Streams and captures follow the current device: make it the weights' device, or
        # a model on cuda:1 would be captured as an empty graph (replays doing nothing).
        with torch.cuda.device(device):
            if key != self.key:  # first call, or a tensor was reallocated: the old graph is stale
                self.key, self.graph, self.eager_left = key, None, self.warmup
                self.prepare()
            if self.graph is not None:
                self.graph.replay()
            elif self.eager_left > 0:
                self.eager_left -= 1
                self._on_side_stream(self.cycle, device)  # a real cycle that also warms up
            else:
                graph = torch.cuda.CUDAGraph()
                # thread_local: a DataLoader's pin-memory thread may touch CUDA meanwhile
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self.cycle()
                self.graph, self.captures = graph, self.captures + 1
                graph.replay()  # capture only records: this call's cycle runs now
