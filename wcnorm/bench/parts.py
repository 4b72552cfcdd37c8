"""The parts of the bench, each a list of CSV rows (one figure per row).

Each part takes (args, plan, device, cache); `cache` holds wcnorm's throughput
measurements by model, so the MFU part reuses the throughput part's timings.
"""

from __future__ import annotations

import math
import tempfile
from functools import partial
from pathlib import Path

import torch

from ..models import CIFAR_MAX_SIZE
from ..outputs import device_name
from .compiled import compile_vs_eager
from .counting import OPS_NOTE, peak_flops
from .field_steps import field_data
from .measure import (
    enorm_overhead,
    field_throughput,
    field_wc_overhead,
    reference_throughput,
    wc_overhead,
    wcnorm_throughput,
)
from .memory import free
from .startup import RUNS, first_step

CIFAR_TRAIN = 50_000  # images in a CIFAR-10 training epoch (the epoch-time figure)


def _row(part, model, setup, shape, batch, metric, value, unit, note=""):
    """`shape`: an image size in pixels (3 x px x px), or a description (the fields' networks)."""
    shape = shape if isinstance(shape, str) else f"3x{shape}x{shape}"
    return {"part": part, "model": model, "setup": setup, "shape": shape, "batch": batch,
            "metric": metric, "value": float(value), "unit": unit, "note": note}


def _guard(measure, spec, plan, device, **kwargs):
    """Run one measurement; an out-of-memory is reported as a note, not a crash."""
    try:
        return measure(spec, plan, device, **kwargs), ""
    except torch.OutOfMemoryError:
        return None, "out of memory"
    finally:
        free(device)


def _wcnorm(args, plan, device, cache, spec):
    if spec not in cache:
        cache[spec] = _guard(wcnorm_throughput, spec, plan, device, batch=args.batch, compile=args.compile)[0]
    return cache[spec]


def run_throughput(args, plan, device, cache) -> list[dict]:
    rows = []
    for spec in args.models:
        ref, why = _guard(reference_throughput, spec, plan, device, batch=args.batch, workers=args.workers)
        ours = _wcnorm(args, plan, device, cache, spec)
        for r in (ref, ours):
            if r is None:
                rows.append(_row("throughput", spec, "", plan.px, args.batch or 0, "images_per_s", math.nan,
                                 "img/s", why or "failed"))
                continue
            note = "" if r["finite"] else "loss not finite"
            row = partial(_row, "throughput", spec, r["setup"], r["px"], r["batch"])
            rows += [row("images_per_s", r["images_per_s"], "img/s", note),
                     row("step_ms", 1e3 * r["step_s"], "ms", note),
                     row("peak_mem", r["mem_mib"], "MiB", r["mem_how"])]
            if r["px"] <= CIFAR_MAX_SIZE:
                rows.append(row("epoch_s", CIFAR_TRAIN / r["images_per_s"], "s",
                                f"{CIFAR_TRAIN} training images at this rate (a CIFAR-10 epoch, no eval)"))
        if ref and ours:
            rows.append(_row("throughput", spec, "wcnorm/reference", ours["px"], ours["batch"], "speedup",
                             ours["images_per_s"] / ref["images_per_s"], "x"))
    return rows


def run_wc(args, plan, device, cache) -> list[dict]:
    spec = plan.wc_model
    r = wc_overhead(spec, plan, device, compile=args.compile)
    free(device)
    row = partial(_row, "wc", spec, "BN+WC vs BN, fixed batch, interleaved", r["px"], r["batch"])
    return [row("bn_step_ms", r["bn_ms"], "ms"),
            row("wc_step_ms", r["wc_ms"], "ms"),
            row("wc_over_bn", r["ratio"], "x"),
            row("bn_ops_per_step", r["bn_ops"], "ops", OPS_NOTE),
            row("wc_ops_per_step", r["wc_ops"], "ops", OPS_NOTE),
            row("wc_kernels_ms", r["kernel_ms"], "ms", KERNELS_NOTE),
            row("wc_kernels_over_bn_step", r["kernel_ms"] / r["bn_ms"], "x", KERNELS_NOTE)]


def run_enorm(args, plan, device, cache) -> list[dict]:
    rows = []
    for spec in plan.enorm_models:
        for norm in plan.enorm_norms:
            r = enorm_overhead(spec, plan, device, norm=norm, compile=args.compile)
            free(device)
            note = f"{r['groups']} groups, {r['units']} units"
            row = partial(_row, "enorm", spec, f"norm={norm}, every step", r["px"], r["batch"])
            rows += [row("step_ms", r["step_ms"], "ms"),
                     row("cycle_ms", r["cycle_ms"], "ms", note),
                     row("cycle_over_step", r["ratio"], "x"),
                     row("ops_per_cycle", r["ops"], "ops", OPS_NOTE),
                     row("step_with_cycle_over_step", r["loop_ratio"], "x"),
                     row("weight_pass_over_step", r["pass_ratio"], "x", PASS_NOTE),
                     row("step_with_weight_pass_over_step", r["pass_loop_ratio"], "x", PASS_NOTE)]
            if "fused_ms" in r:
                fused = "fused=True: the chain's cycle, one visit per weight"
                rows += [row("cycle_fused_ms", r["fused_ms"], "ms", fused),
                         row("cycle_fused_over_step", r["fused_ratio"], "x", fused),
                         row("ops_per_cycle_fused", r["fused_ops"], "ops", OPS_NOTE),
                         row("step_with_cycle_fused_over_step", r["fused_loop_ratio"], "x", fused)]
            if "graph_ms" in r:
                rows += [row("cycle_graph_ms", r["graph_ms"], "ms", "cuda_graph=True: the cycle as one graph"),
                         row("cycle_graph_over_step", r["graph_ratio"], "x"),
                         row("step_with_cycle_graph_over_step", r["graph_loop_ratio"], "x")]
    return rows


def run_mfu(args, plan, device, cache) -> list[dict]:
    rows, name = [], device_name(device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(name)
    note = f"peak {peak / 1e12:.0f} TFLOP/s dense bf16" if math.isfinite(peak) else "no known peak for this device"
    for spec in args.models:
        r = _wcnorm(args, plan, device, cache, spec)
        if r is None:
            continue
        achieved = r["flops"] / r["step_s"]
        row = partial(_row, "mfu", spec, r["setup"], r["px"], r["batch"])
        rows += [row("gflop_per_step", r["flops"] / 1e9, "GFLOP", "FlopCounterMode, forward + backward"),
                 row("achieved", achieved / 1e9, "GFLOP/s"),
                 row("mfu", achieved / peak, "fraction", note)]
    return rows


def run_fields(args, plan, device, cache) -> list[dict]:
    """NeRF's rays/s and occupancy's points/s against the plain loop, and WC's overhead
    on each field MLP (`wcnorm.bench.field_steps`)."""
    rows = []
    for field in plan.fields:
        with tempfile.TemporaryDirectory(prefix="wcnorm-bench-") as folder:
            data = field_data(Path(folder), field)
            r = field_throughput(field, plan, device, data, workers=args.workers or 0)
            free(device)
            w = field_wc_overhead(field, plan, device, data)
            free(device)
        per_s = f"{r['unit']}_per_s"
        for who in ("reference", "wcnorm"):
            m = r[who]
            note = "" if m["finite"] else "loss not finite"
            row = partial(_row, "fields", field, m["setup"], r["shape"], r["batch"])
            rows += [row(per_s, m["per_s"], f"{r['unit']}/s", note), row("step_ms", 1e3 * m["step_s"], "ms", note),
                     row("peak_mem", m["mem_mib"], "MiB", m["mem_how"])]
        rows.append(_row("fields", field, "wcnorm/reference", r["shape"], r["batch"], "speedup",
                         r["speedup"], "x", "paired: the two steps timed interleaved"))
        row = partial(_row, "fields", field, "WC vs none, fixed batch, interleaved", w["shape"], w["batch"])
        rows += [row("none_step_ms", w["none_ms"], "ms"), row("wc_step_ms", w["wc_ms"], "ms"),
                 row("wc_over_none", w["ratio"], "x"), row("none_over_none", w["control"], "x", CONTROL_NOTE),
                 row("wc_lazy_over_none", w["lazy"], "x", LAZY_NOTE),
                 row("wc_kernels_ms", w["kernel_ms"], "ms", KERNELS_NOTE),
                 row("wc_kernels_over_none_step", w["kernel_ms"] / w["none_ms"], "x", KERNELS_NOTE)]
    return rows


def run_startup(args, plan, device, cache) -> list[dict]:
    """Seconds from `wcnorm train` to its first step, in a fresh process (`startup`)."""
    rows = []
    for name, overrides in RUNS.items():
        r = first_step(overrides, threads=args.threads)
        row = partial(_row, "startup", name, " ".join(overrides), "-", 0)
        note = f"imported at the first step: {r['modules']}"
        rows += [row("import_s", r["import_s"], "s", "process start to the training modules imported"),
                 row("ready_s", r["ready_s"], "s", note),
                 row("first_step_s", r["first_step_s"], "s", "process start to the end of the first step")]
    return rows


def run_compile(args, plan, device, cache) -> list[dict]:
    """trainer.compile=true against eager (`compiled`); a failure to compile is a row
    saying why, not a crash."""
    rows = []
    for model in plan.compile_models:
        with tempfile.TemporaryDirectory(prefix="wcnorm-bench-") as folder:
            try:
                r = compile_vs_eager(model, plan, device, Path(folder))
            except Exception as err:  # noqa: BLE001 - the toolchain's error, whatever it is, is the figure
                why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                rows.append(_row("compile", model, "trainer.compile=true", "-", 0, "compiled_over_eager",
                                 math.nan, "x", f"compile failed: {type(err).__name__}: {why}"))
                continue
            finally:
                free(device)
        row = partial(_row, "compile", model, "trainer.compile=true vs eager, fixed batch, interleaved",
                      r["shape"], r["batch"])
        rows += [row("eager_step_ms", r["eager_ms"], "ms"), row("compiled_step_ms", r["compiled_ms"], "ms"),
                 row("compiled_over_eager", r["ratio"], "x"),
                 row("eager_first_step_s", r["eager_first_s"], "s", "wall clock"),
                 row("compiled_first_step_s", r["compiled_first_s"], "s", "wall clock, includes compiling"),
                 row("break_even_steps", r["break_even_steps"], "steps",
                     "extra first-step seconds / seconds saved per step; inf: the compiled step is not faster")]
    return rows


KERNELS_NOTE = "E(W) W forward and backward on the model's own weights, alone"
PASS_NOTE = ("one read and one write of every parameter (foreach multiply by 1): "
             "the floor of any cycle run after the optimizer's step")
LAZY_NOTE = "WC with each effective weight computed at its layer's first call (Trainer.batch_weights=False)"
CONTROL_NOTE = "A/A control: a second step without WC over the first, in the same rotation (1 but for noise)"

# In the order they run: throughput before mfu, which reuses its timings.
RUNNERS = {"throughput": run_throughput, "wc": run_wc, "enorm": run_enorm, "mfu": run_mfu, "fields": run_fields,
           "startup": run_startup, "compile": run_compile}
PARTS = tuple(RUNNERS)
# What `wcnorm bench` measures unless `--only` names parts: startup and compile take
# minutes of their own (fresh processes, compilation), so they run when asked for.
DEFAULT_PARTS = ("throughput", "wc", "enorm", "mfu", "fields")
