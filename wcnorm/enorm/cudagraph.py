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
    graph's key. The first `warmup` calls after any change of key run eagerly."""

    def __init__(self, cycle: Callable[[], None], tensors: Callable[[], list[Tensor]], warmup: int = 2):
        self.cycle, self.tensors, self.warmup = cycle, tensors, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key, self.eager_left, self.captures = None, warmup, 0

    def _on_side_stream(self, fn: Callable[[], None]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)

    def __call__(self) -> None:
        key = tuple(t.data_ptr() for t in self.tensors())
        if key != self.key:  # first call, or a tensor was reallocated: the old graph is stale
            self.key, self.graph, self.eager_left = key, None, self.warmup
        if self.graph is not None:
            self.graph.replay()
        elif self.eager_left > 0:
            self.eager_left -= 1
            self._on_side_stream(self.cycle)  # a real cycle that also warms up
        else:
            graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may touch CUDA meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.cycle()
            self.graph, self.captures = graph, self.captures + 1
            graph.replay()  # capture only records: this call's cycle runs now
