"""What a step does, counted rather than timed: tensor ops dispatched, and FLOPs."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

OPS_NOTE = "tensor ops dispatched, views excluded, _foreach_ per tensor"
# Dense bf16 tensor-core peaks (FLOP/s), first substring match of the device name wins.
PEAK_BF16 = (("H200", 989e12), ("GH200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12),
             ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12))


class OpCounter(TorchDispatchMode):
    """Counts the tensor ops dispatched inside the block, views excluded (they launch
    nothing); a `_foreach_` call counts once per tensor of its list, as un-fused launches."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            name = func.overloadpacket.__name__
            self.ops += len(args[0]) if name.startswith("_foreach_") else 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    with OpCounter() as counter:
        fn()
    return counter.ops


def _autocast(device_type: str, dtype):
    return torch.autocast(device_type, dtype=dtype) if dtype else nullcontext()


def step_flops(model, x, y, *, amp_dtype=None) -> tuple[int, int]:
    """(forward, backward) FLOPs of one training step, from FlopCounterMode's formulas
    (matmuls, convolutions, attention; elementwise ops and the optimizer are not counted).
    Forward is counted on a separate pass, so no counter has to follow autograd."""
    with torch.no_grad(), _autocast(x.device.type, amp_dtype), FlopCounterMode(display=False) as fwd:
        model(x)
    with FlopCounterMode(display=False) as total:
        with _autocast(x.device.type, amp_dtype):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return fwd.get_total_flops(), total.get_total_flops() - fwd.get_total_flops()


def peak_flops(name: str) -> float:
    """Dense bf16 peak of a known GPU; NaN for anything else (CPUs included)."""
    return next((p for key, p in PEAK_BF16 if key.lower() in name.lower()), math.nan)
