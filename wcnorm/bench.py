"""`wcnorm bench`: how fast wcnorm's training step is, and what WC and ENorm cost.

Four parts, all in one process, on synthetic uint8 images (nothing is downloaded):

* throughput: images/s and peak memory of wcnorm's step (`ArrayLoader` on the device +
  `Trainer.train_step` with the runner's settings: bf16 autocast, channels_last and a
  fused optimizer on CUDA, optionally torch.compile) against a plain torchvision-style
  loop (DataLoader + per-sample CPU transforms, fp32, plain SGD), same model and batch;
* wc: step time of BN+WC over step time of BN (ResNet-18), interleaved repeats, and the
  tensor ops each step dispatches;
* enorm: time of one ENorm cycle over time of one training step (no BN, and BN+ENorm), and
  the number of tensor ops one cycle dispatches (device-independent; the cycle reads each
  weight once, so on a GPU its time is expected to follow its kernel launches);
* mfu: FLOPs of the training step (FlopCounterMode, forward + backward) per second of
  wcnorm's step, over the device's dense bf16 peak.

Every figure is the median over `repeats` blocks of `steps` back-to-back calls, after
`warmup` untimed calls (compilation, cudnn autotuning, allocator growth), with the
device drained (synchronize) before each timer read.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import io
import math
import os
import re
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from .outputs import device_name

PARTS = ("throughput", "wc", "enorm", "mfu")
NUM_CLASSES, PAD = 10, 4
CIFAR_TRAIN = 50_000  # images in a CIFAR-10 training epoch (the epoch-time figure)
OPS_NOTE = "tensor ops dispatched, views excluded, _foreach_ per tensor"
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# The runner's SGD, except lr: no timing depends on it, and a small one keeps the no-BN
# nets finite over hundreds of steps on random labels (inf/NaN or denormals skew CPU times).
SGD = dict(name="sgd", lr=0.01, momentum=0.9, nesterov=False, weight_decay=5e-4)
# Dense bf16 tensor-core peaks (FLOP/s), first substring match of the device name wins.
PEAK_BF16 = (("H200", 989e12), ("GH200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12),
             ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12), ("L4", 121e12))
COLUMNS = ["date", "device", "device_name", "torch_version", "threads", "size", "part", "model",
           "setup", "shape", "batch", "metric", "value", "unit", "note"]


@dataclass(frozen=True)
class Plan:
    batch: int            # throughput batch at CIFAR size
    big_batch: int        # throughput batch above 64 px (ImageNet size)
    overhead_batch: int   # WC and ENorm ratios
    px: int               # "CIFAR" image size
    warmup: int
    repeats: int
    steps: int            # calls per timed block
    models: tuple[str, ...]
    enorm_models: tuple[str, ...]
    enorm_norms: tuple[str, ...]
    wc_model: str = "resnet18"
    data_batches: int = 8  # synthetic images = data_batches x batch (an epoch boundary every so many steps)
    options: dict = field(default_factory=dict)  # build_model options per model name


SIZES = {
    # the test suite's: seconds; ResNet-18 at 8 px (its smallest), a narrow ViT, the ENorm FC net
    "tiny": Plan(8, 2, 8, 8, 2, 3, 1, ("resnet18", "vit"), ("enorm_fc",), ("enorm",), wc_model="vit",
                 options={"vit": {"dim": 64, "depth": 2, "heads": 2}, "enorm_fc": {"depth": 2, "width": 128}}),
    # a few minutes on 2 CPU cores
    "cpu": Plan(16, 4, 16, 32, 2, 3, 2, ("resnet18", "densenet121", "vit", "resnet18@224"),
                ("resnet18", "densenet121"), ("enorm", "bn_enorm")),
    # the real shapes
    "gpu": Plan(512, 128, 128, 32, 10, 5, 20, ("resnet18", "densenet121", "vit", "resnet18@224"),
                ("resnet18", "densenet121"), ("enorm", "bn_enorm"), data_batches=32),
}


# ----------------------------------------------------------------------------- timing


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


# ----------------------------------------------------------------------------- memory


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
    at entry, sampled every 2 ms by a thread (approximate: freed memory the allocator kept
    from earlier work is reused without showing up)."""
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
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out.update(mib=max(0.0, max(peak[0], _rss()) - base) / 2**20, how="CPU peak RSS delta (sampled)")


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


# ----------------------------------------------------------------------------- data


def synthetic(n: int, px: int, seed: int = 0):
    from .data import ArraySplit

    g = torch.Generator().manual_seed(seed)
    return ArraySplit(torch.randint(0, 256, (n, 3, px, px), generator=g, dtype=torch.uint8),
                      torch.randint(0, NUM_CLASSES, (n,), generator=g))


class AugmentedImages(Dataset):
    """uint8 images through torchvision.transforms.v2 one at a time, in DataLoader workers:
    the usual torchvision recipe (padded random crop, flip, to float, normalise)."""

    def __init__(self, split, px: int):
        from torchvision.transforms import v2

        self.x, self.y = split.x, split.y
        self.transform = v2.Compose([v2.RandomCrop(px, padding=PAD), v2.RandomHorizontalFlip(),
                                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def forever(loader):
    """Batches across epoch boundaries (set_epoch for wcnorm's loaders)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# ----------------------------------------------------------------------------- the two loops


def parse_spec(spec: str, px: int) -> tuple[str, int]:
    """'resnet18' -> (resnet18, CIFAR px); 'resnet18@224' -> (resnet18, 224)."""
    name, _, size = spec.partition("@")
    return name, int(size) if size else px


def default_workers(device) -> int:
    # On CPU, workers would compete with the step for the same cores.
    return min(8, os.cpu_count() or 1) if torch.device(device).type == "cuda" else 0


def _model(name: str, px: int, act_norm: str | None = None, options: dict | None = None):
    from .models import build_model, supported_act_norms

    return build_model(name, num_classes=NUM_CLASSES, image_size=px,
                       act_norm=act_norm or supported_act_norms(name)[0], **(options or {}))


def build_reference(name: str, px: int, *, batch: int, device, workers: int | None = None,
                    options: dict | None = None, data_batches: int = 8):
    """A plain PyTorch loop: DataLoader with CPU transforms, fp32, torch.optim.SGD defaults."""
    device = torch.device(device)
    model = _model(name, px, options=options).to(device)
    workers = default_workers(device) if workers is None else workers
    loader = DataLoader(AugmentedImages(synthetic(batch * data_batches, px), px), batch, shuffle=True,
                        drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    opt = torch.optim.SGD(model.parameters(), lr=SGD["lr"], momentum=SGD["momentum"],
                          weight_decay=SGD["weight_decay"])
    batches = forever(loader)
    model.train()

    def step():
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, f"reference[fp32,DataLoader(workers={workers}),SGD]"


def build_trainer(name: str, px: int, *, batch: int, device, act_norm: str | None = None,
                  weight: str = "none", compile: bool = False, options: dict | None = None,
                  data_batches: int = 8):
    """Model, optimizer, schedule, loader and Trainer as `wcnorm train` builds them."""
    from omegaconf import OmegaConf

    from .data import ArrayLoader
    from .training.optim import build_optimizer, build_scheduler
    from .training.train import resolve_amp
    from .training.trainer import Trainer
    from .methods.weight_methods import apply_weight_method

    device = torch.device(device)
    model = _model(name, px, act_norm, options)
    if weight != "none":
        apply_weight_method(model, weight, {})
    model = model.to(device)
    channels_last = device.type == "cuda" and name not in ("vit", "enorm_fc")  # as the runner's "auto"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = ArrayLoader(synthetic(batch * data_batches, px), batch, mean=MEAN, std=STD, device=device,
                         augment=True, pad=PAD, channels_last=channels_last)
    optimizer = build_optimizer(model, OmegaConf.create(SGD), fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, OmegaConf.create({"name": "cosine"}),
                                steps_per_epoch=len(loader), epochs=10_000)
    if compile:
        model.compile()  # in place, as the runner does
    amp = resolve_amp("auto", device)
    trainer = Trainer(model, optimizer, scheduler, loader, None, device=device, epochs=1, amp_dtype=amp)
    model.train()
    flags = [str(amp).removeprefix("torch.") if amp else "fp32", "ArrayLoader"]
    flags += ["channels_last"] * channels_last + ["fused" if device.type == "cuda" else "foreach"]
    flags += ["compile"] * compile
    return trainer, f"wcnorm[{','.join(flags)}]"


def build_wcnorm(name: str, px: int, *, batch: int, device, compile: bool = False,
                 options: dict | None = None, data_batches: int = 8):
    """wcnorm's step: the next ArrayLoader batch, then Trainer.train_step."""
    trainer, setup = build_trainer(name, px, batch=batch, device=device, compile=compile, options=options,
                                   data_batches=data_batches)
    batches = forever(trainer.train_loader)

    def step():
        return trainer.train_step(*next(batches))[0]

    return step, setup, trainer


# ----------------------------------------------------------------------------- FLOPs


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


def slug(device) -> str:
    name = device_name(device)
    name = name if torch.device(device).type == "cuda" else f"cpu-{name}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ----------------------------------------------------------------------------- measurements


def _measure(build, plan: Plan, device) -> tuple[dict, tuple]:
    """Build and warm up inside `peak_memory`, then time; returns (stats, built)."""
    with peak_memory(device) as mem:
        built = build()
        for _ in range(plan.warmup):
            built[0]()
    times = time_step({"step": built[0]}, warmup=0, repeats=plan.repeats, steps=plan.steps, device=device)["step"]
    loss = float(built[0]())
    return {"step_s": statistics.median(times), "mem_mib": mem["mib"], "mem_how": mem["how"],
            "finite": math.isfinite(loss)}, built


def reference_throughput(spec: str, plan: Plan, device, *, batch: int | None = None,
                         workers: int | None = None) -> dict:
    name, px = parse_spec(spec, plan.px)
    batch = batch or (plan.big_batch if px > 64 else plan.batch)
    stats, (_, setup) = _measure(lambda: build_reference(name, px, batch=batch, device=device, workers=workers,
                                                         options=plan.options.get(name),
                                                         data_batches=plan.data_batches), plan, device)
    return {**stats, "images_per_s": batch / stats["step_s"], "setup": setup, "batch": batch, "px": px}


def wcnorm_throughput(spec: str, plan: Plan, device, *, batch: int | None = None, compile: bool = False,
                      flops: bool = True) -> dict:
    """wcnorm's step; with `flops`, also the FLOPs of one step (counted before compiling)."""
    name, px = parse_spec(spec, plan.px)
    batch = batch or (plan.big_batch if px > 64 else plan.batch)
    counted = {}

    def build():
        step, setup, trainer = build_wcnorm(name, px, batch=batch, device=device, options=plan.options.get(name),
                                            data_batches=plan.data_batches)
        if flops:
            x, y = next(iter(trainer.train_loader))
            counted["fwd"], counted["bwd"] = step_flops(trainer.model, x, y, amp_dtype=trainer.amp_dtype)
        if compile:
            trainer.model.compile()
            setup = setup.replace("]", ",compile]")
        return step, setup

    stats, (_, setup) = _measure(build, plan, device)
    out = {**stats, "images_per_s": batch / stats["step_s"], "setup": setup, "batch": batch, "px": px}
    if torch.device(device).type == "cuda":  # the reference keeps its images in host memory
        out["mem_how"] += ", incl. the uint8 dataset on the device"
    if flops:
        out["flops"] = counted["fwd"] + counted["bwd"]
    return out


def _fixed_step(trainer):
    """Trainer.train_step on one fixed batch: the model step alone, without data loading."""
    x, y = next(iter(trainer.train_loader))
    return lambda: trainer.train_step(x, y)[0]


def wc_overhead(spec: str, plan: Plan, device, *, compile: bool = False) -> dict:
    """Step time of BN+WC over BN (runner settings, fixed batch), interleaved repeats."""
    name, px = parse_spec(spec, plan.px)
    steps = {w: _fixed_step(build_trainer(name, px, batch=plan.overhead_batch, device=device, weight=w,
                                          compile=compile, options=plan.options.get(name))[0])
             for w in ("none", "wc")}
    t = time_step(steps, warmup=plan.warmup, repeats=plan.repeats, steps=plan.steps, device=device)
    return {"ratio": median_ratio(t["wc"], t["none"]), "bn_ms": 1e3 * statistics.median(t["none"]),
            "wc_ms": 1e3 * statistics.median(t["wc"]), "batch": plan.overhead_batch, "px": px,
            "bn_ops": count_ops(steps["none"]), "wc_ops": count_ops(steps["wc"])}


def enorm_overhead(spec: str, plan: Plan, device, *, norm: str = "enorm", compile: bool = False) -> dict:
    """One ENorm cycle over one training step (forward + backward + optimizer), every-step
    frequency. norm='enorm': no BN (act_norm='none'); 'bn_enorm': BN, ignored by ENorm.
    Also times step + cycle back to back: the cost as training sees it (with the host
    free to queue the cycle behind the step on CUDA)."""
    from .methods.enorm import ENorm

    name, px = parse_spec(spec, plan.px)
    act = "none" if norm == "enorm" else "bn"
    trainer, _ = build_trainer(name, px, batch=plan.overhead_batch, device=device, act_norm=act, compile=compile,
                               options=plan.options.get(name))
    enorm = ENorm(trainer.model, trainer.optimizer, c=1.0)
    step = _fixed_step(trainer)
    fns = {"step": step, "cycle": enorm.step, "both": lambda: (step(), enorm.step())}
    if torch.device(device).type == "cuda":  # the same cycle replayed as one CUDA graph
        graphed = ENorm(trainer.model, trainer.optimizer, c=1.0, cuda_graph=True)
        fns.update(cycle_graph=graphed.step, both_graph=lambda: (step(), graphed.step()))
    t = time_step(fns, warmup=plan.warmup, repeats=plan.repeats, steps=plan.steps, device=device)
    out = {"ratio": median_ratio(t["cycle"], t["step"]), "loop_ratio": median_ratio(t["both"], t["step"]),
           "ops": count_ops(enorm.step),
           "step_ms": 1e3 * statistics.median(t["step"]), "cycle_ms": 1e3 * statistics.median(t["cycle"]),
           "groups": len(enorm.groups), "units": enorm.num_units, "batch": plan.overhead_batch, "px": px}
    if "cycle_graph" in t:
        out.update(graph_ratio=median_ratio(t["cycle_graph"], t["step"]),
                   graph_loop_ratio=median_ratio(t["both_graph"], t["step"]),
                   graph_ms=1e3 * statistics.median(t["cycle_graph"]))
    return out


# ----------------------------------------------------------------------------- the command


def _row(part, model, setup, px, batch, metric, value, unit, note=""):
    return {"part": part, "model": model, "setup": setup, "shape": f"3x{px}x{px}", "batch": batch,
            "metric": metric, "value": float(value), "unit": unit, "note": note}


def _free(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _guard(fn, *args, **kwargs):
    """Run one measurement; an out-of-memory is reported as a note, not a crash."""
    try:
        return fn(*args, **kwargs), ""
    except torch.OutOfMemoryError:
        return None, "out of memory"
    finally:
        _free(args[2])


def run_throughput(args, plan, device, cache) -> list[dict]:
    rows = []
    for spec in args.models:
        ref, why = _guard(reference_throughput, spec, plan, device, batch=args.batch, workers=args.workers)
        ours = cache.get(spec) or _guard(wcnorm_throughput, spec, plan, device, batch=args.batch,
                                         compile=args.compile)[0]
        cache[spec] = ours
        for r in (ref, ours):
            if r is None:
                rows.append(_row("throughput", spec, "", plan.px, args.batch or 0, "images_per_s", math.nan,
                                 "img/s", why or "failed"))
                continue
            note = "" if r["finite"] else "loss not finite"
            rows += [_row("throughput", spec, r["setup"], r["px"], r["batch"], "images_per_s", r["images_per_s"], "img/s", note),
                     _row("throughput", spec, r["setup"], r["px"], r["batch"], "step_ms", 1e3 * r["step_s"], "ms", note),
                     _row("throughput", spec, r["setup"], r["px"], r["batch"], "peak_mem", r["mem_mib"], "MiB", r["mem_how"])]
            if r["px"] <= 64:
                rows.append(_row("throughput", spec, r["setup"], r["px"], r["batch"], "epoch_s",
                                 CIFAR_TRAIN / r["images_per_s"], "s",
                                 f"{CIFAR_TRAIN} training images at this rate (a CIFAR-10 epoch, no eval)"))
        if ref and ours:
            rows.append(_row("throughput", spec, "wcnorm/reference", ours["px"], ours["batch"], "speedup",
                             ours["images_per_s"] / ref["images_per_s"], "x"))
    return rows


def run_wc(args, plan, device, cache) -> list[dict]:
    spec = plan.wc_model
    r = wc_overhead(spec, plan, device, compile=args.compile)
    _free(device)
    setup = "BN+WC vs BN, fixed batch, interleaved"
    return [_row("wc", spec, setup, r["px"], r["batch"], "bn_step_ms", r["bn_ms"], "ms"),
            _row("wc", spec, setup, r["px"], r["batch"], "wc_step_ms", r["wc_ms"], "ms"),
            _row("wc", spec, setup, r["px"], r["batch"], "wc_over_bn", r["ratio"], "x"),
            _row("wc", spec, setup, r["px"], r["batch"], "bn_ops_per_step", r["bn_ops"], "ops", OPS_NOTE),
            _row("wc", spec, setup, r["px"], r["batch"], "wc_ops_per_step", r["wc_ops"], "ops", OPS_NOTE)]


def run_enorm(args, plan, device, cache) -> list[dict]:
    rows = []
    for spec in plan.enorm_models:
        for norm in plan.enorm_norms:
            r = enorm_overhead(spec, plan, device, norm=norm, compile=args.compile)
            _free(device)
            setup, note = f"norm={norm}, every step", f"{r['groups']} groups, {r['units']} units"
            row = partial(_row, "enorm", spec, setup, r["px"], r["batch"])
            rows += [row("step_ms", r["step_ms"], "ms"),
                     row("cycle_ms", r["cycle_ms"], "ms", note),
                     row("cycle_over_step", r["ratio"], "x"),
                     row("ops_per_cycle", r["ops"], "ops", OPS_NOTE),
                     row("step_with_cycle_over_step", r["loop_ratio"], "x")]
            if "graph_ms" in r:
                rows += [row("cycle_graph_ms", r["graph_ms"], "ms", "cuda_graph=True: the cycle as one graph"),
                         row("cycle_graph_over_step", r["graph_ratio"], "x"),
                         row("step_with_cycle_graph_over_step", r["graph_loop_ratio"], "x")]
    return rows


def run_mfu(args, plan, device, cache) -> list[dict]:
    rows, name = [], device_name(device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(name)
    for spec in args.models:
        r = cache.get(spec) or _guard(wcnorm_throughput, spec, plan, device, batch=args.batch,
                                      compile=args.compile)[0]
        cache[spec] = r
        if r is None:
            continue
        achieved = r["flops"] / r["step_s"]
        note = f"peak {peak / 1e12:.0f} TFLOP/s dense bf16" if math.isfinite(peak) else "no known peak for this device"
        rows += [_row("mfu", spec, r["setup"], r["px"], r["batch"], "gflop_per_step", r["flops"] / 1e9, "GFLOP",
                      "FlopCounterMode, forward + backward"),
                 _row("mfu", spec, r["setup"], r["px"], r["batch"], "achieved", achieved / 1e9, "GFLOP/s"),
                 _row("mfu", spec, r["setup"], r["px"], r["batch"], "mfu", achieved / peak, "fraction", note)]
    return rows


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wcnorm bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="figures: median over repeats after warm-up; see the module docstring")
    p.add_argument("--size", choices=SIZES, help="tiny (tests), cpu, gpu (default: gpu on CUDA, else cpu)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts among {','.join(PARTS)}")
    p.add_argument("--models", help="throughput/MFU models, e.g. resnet18,vit,resnet18@224 (default: the size's)")
    p.add_argument("--batch", type=int, help="override the throughput batch")
    p.add_argument("--overhead-batch", type=int, help="override the batch of the WC and ENorm ratios")
    p.add_argument("--repeats", type=int, help="override the number of timed blocks")
    p.add_argument("--compile", action="store_true", help="torch.compile wcnorm's model (never the reference)")
    p.add_argument("--workers", type=int, help="reference DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU, if not in the built-in table")
    p.add_argument("--out", default="results/bench", help="folder of <device-slug>.csv")
    return p


def format_table(rows: list[dict]) -> str:
    cols = ["part", "model", "setup", "shape", "batch", "metric", "value", "unit", "note"]
    cells = [[f"{r[c]:.4g}" if c == "value" else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]

    def line(xs):
        return "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, cells)])


def write_rows(path: Path, rows: list[dict]) -> None:
    from .outputs import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    from .errors import WcnormError
    from .training.train import resolve_device

    args = _parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
    except WcnormError as err:
        print(f"wcnorm bench: {err}")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = SIZES[args.size or ("gpu" if device.type == "cuda" else "cpu")]
    if args.repeats:
        plan = replace(plan, repeats=args.repeats)
    if args.overhead_batch:
        plan = replace(plan, overhead_batch=args.overhead_batch)
    args.models = tuple(args.models.split(",")) if args.models else plan.models
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        print(f"wcnorm bench: unknown part(s) {unknown}; valid: {','.join(PARTS)}")
        return 2
    torch.backends.cudnn.benchmark = True  # as the runner (non-deterministic runs); for both loops
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
           "device_name": device_name(device), "torch_version": torch.__version__,
           "threads": torch.get_num_threads(), "size": args.size or ("gpu" if device.type == "cuda" else "cpu")}
    print(f"wcnorm bench: {env['device_name']} ({device}), torch {env['torch_version']}, "
          f"{env['threads']} threads, size {env['size']}", flush=True)
    runners = {"throughput": run_throughput, "wc": run_wc, "enorm": run_enorm, "mfu": run_mfu}
    rows, cache = [], {}
    out = Path(args.out) / f"{slug(device)}.csv"
    for part in (p for p in PARTS if p in parts):  # throughput before mfu: mfu reuses its timings
        t0 = time.perf_counter()
        new = runners[part](args, plan, device, cache)
        rows += [{**env, **r} for r in new]
        write_rows(out, rows)  # after every part: a run cut short keeps what it measured
        print(f"{part}: {len(new)} figures in {time.perf_counter() - t0:.0f} s", flush=True)
    print(format_table(rows))
    print(f"wrote {out}")
    return 0
