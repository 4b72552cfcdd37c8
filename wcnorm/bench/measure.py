"""One measurement per set-up: a step's throughput and memory, WC's and ENorm's overheads."""

from __future__ import annotations

import math
import statistics

import torch
from omegaconf import OmegaConf
from torch.nn.utils import parametrize

from ..methods.weight_method import effective_weights
from ..training.assemble import build_enorm
from .counting import count_ops, step_flops
from .field_steps import (
    FIELDS,
    field_config,
    fixed_field_step,
    network_shape,
    reference_field_step,
    wcnorm_field_step,
)
from .memory import peak_memory
from .plans import Plan, parse_spec
from .setups import build_reference, build_run, build_trainer, build_wcnorm
from .timing import median_ratio, time_step


def _measure(build, plan: Plan, device) -> tuple[dict, str]:
    """Build and warm up inside `peak_memory`, then time; `build() -> (step, setup)`."""
    with peak_memory(device) as mem:
        step, setup = build()
        for _ in range(plan.warmup):
            step()
    times = time_step({"step": step}, warmup=0, repeats=plan.repeats, steps=plan.steps, device=device)["step"]
    loss = float(step())
    return {"step_s": statistics.median(times), "mem_mib": mem["mib"], "mem_how": mem["how"],
            "finite": math.isfinite(loss)}, setup


def reference_throughput(spec: str, plan: Plan, device, *, batch: int | None = None,
                         workers: int | None = None) -> dict:
    name, px = parse_spec(spec, plan.px)
    batch = batch or plan.batch_at(px)
    stats, setup = _measure(lambda: build_reference(name, px, batch=batch, device=device, workers=workers,
                                                    options=plan.options.get(name),
                                                    data_batches=plan.data_batches), plan, device)
    return {**stats, "images_per_s": batch / stats["step_s"], "setup": setup, "batch": batch, "px": px}


def wcnorm_throughput(spec: str, plan: Plan, device, *, batch: int | None = None, compile: bool = False,
                      flops: bool = True) -> dict:
    """wcnorm's step; with `flops`, also the FLOPs of one step (counted before compiling)."""
    name, px = parse_spec(spec, plan.px)
    batch = batch or plan.batch_at(px)
    counted = {}

    def build():
        step, setup, trainer = build_wcnorm(name, px, batch=batch, device=device, options=plan.options.get(name),
                                            data_batches=plan.data_batches)
        if flops:
            x, y = next(iter(trainer.train_loader))
            counted["fwd"], counted["bwd"] = step_flops(trainer.model, x, y, amp_dtype=trainer.amp_dtype)
        if compile:
            trainer.model.compile()  # in place, as the runner does
            setup = setup.replace("]", ",compile]")
        return step, setup

    stats, setup = _measure(build, plan, device)
    out = {**stats, "images_per_s": batch / stats["step_s"], "setup": setup, "batch": batch, "px": px}
    if torch.device(device).type == "cuda":  # the reference keeps its images in host memory
        out["mem_how"] += ", incl. the uint8 dataset on the device"
    if flops:
        out["flops"] = counted["fwd"] + counted["bwd"]
    return out


def fixed_step(trainer):
    """Trainer.train_step on one fixed batch: the model step alone, without data loading."""
    x, y = next(iter(trainer.train_loader))
    return lambda: trainer.train_step(x, y)[0]


def method_kernels(model):
    """A call that computes every effective weight of `model` (WC's E(W) W) as a training
    step does (`effective_weights`: all together, batched where the method allows) and
    runs its backward on the model's own raw weights, and nothing else: what the method
    itself costs in a step, apart from the step's other work."""
    tensors = [(m, t) for m in model.modules() if parametrize.is_parametrized(m) for t in m.parametrizations]
    raw = [p for m, t in tensors for p in m.parametrizations[t].parameters()]
    grads = [torch.ones_like(getattr(m, t)) for m, t in tensors]

    def run():
        with effective_weights(model):
            outs = [getattr(m, t) for m, t in tensors]
        torch.autograd.backward(outs, grads, inputs=raw)
        for p in raw:
            p.grad = None

    return run


def _kernel_ms(model, plan: Plan, device) -> float:
    t = time_step({"k": method_kernels(model)}, warmup=plan.warmup, repeats=plan.repeats, steps=plan.steps,
                  device=device)
    return 1e3 * statistics.median(t["k"])


def wc_overhead(spec: str, plan: Plan, device, *, compile: bool = False) -> dict:
    """Step time of BN+WC over BN (the model's usual norm: LN for the ViT), runner
    settings, fixed batch, interleaved repeats."""
    name, px = parse_spec(spec, plan.px)
    trainers = {w: build_trainer(name, px, batch=plan.overhead_batch, device=device, weight=w,
                                 compile=compile, options=plan.options.get(name))[0] for w in ("none", "wc")}
    steps = {w: fixed_step(trainer) for w, trainer in trainers.items()}
    t = time_step(steps, warmup=plan.warmup, repeats=plan.repeats, steps=plan.steps, device=device)
    return {"ratio": median_ratio(t["wc"], t["none"]), "bn_ms": 1e3 * statistics.median(t["none"]),
            "wc_ms": 1e3 * statistics.median(t["wc"]), "batch": plan.overhead_batch, "px": px,
            "bn_ops": count_ops(steps["none"]), "wc_ops": count_ops(steps["wc"]),
            "kernel_ms": _kernel_ms(trainers["wc"].model, plan, device)}


def enorm_overhead(spec: str, plan: Plan, device, *, norm: str = "enorm", compile: bool = False) -> dict:
    """One ENorm cycle over one training step (forward + backward + optimizer), every-step
    frequency. `norm`: the preset, 'enorm' (no BN) or 'bn_enorm' (BN, ignored by ENorm).
    The step runs without its cycle (ENorm off in the run's config) and the cycle is
    built apart, from the preset's `norm.enorm` node. Also times step + cycle back to
    back: the cost as training sees it (with the host free to queue the cycle behind
    the step on CUDA). And the floor of any cycle run after the optimizer's step: one
    in-place pass over every parameter (a foreach multiply by 1: one read and one write
    of each), alone and after the step."""
    name, px = parse_spec(spec, plan.px)
    batch = plan.batch_of(name)
    run = build_run(name, px, batch=batch, device=device, norm=norm, compile=compile,
                    options=plan.options.get(name), overrides=["norm.enorm.enabled=false"])
    enorm = build_enorm(run.cfg.norm.enorm, run.model, run.optimizer)
    fused = build_enorm(OmegaConf.merge(run.cfg.norm.enorm, {"fused": True}), run.model, run.optimizer)
    step = fixed_step(run.trainer)
    params = [p for p in run.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def weight_pass():  # one read and one write of each parameter, as an in-place update makes
        torch._foreach_mul_(params, 1.0)

    fns = {"step": step, "cycle": enorm.step, "both": lambda: (step(), enorm.step()),
           "pass": weight_pass, "both_pass": lambda: (step(), weight_pass())}
    if fused.fused:  # a chain: its one-visit cycle, timed with the others
        fns.update(cycle_fused=fused.step, both_fused=lambda: (step(), fused.step()))
    if torch.device(device).type == "cuda":  # the same cycle replayed as one CUDA graph
        graphed = build_enorm(OmegaConf.merge(run.cfg.norm.enorm, {"cuda_graph": True}), run.model, run.optimizer)
        fns.update(cycle_graph=graphed.step, both_graph=lambda: (step(), graphed.step()))
    t = time_step(fns, warmup=plan.warmup, repeats=plan.repeats, steps=plan.steps, device=device)
    out = {"ratio": median_ratio(t["cycle"], t["step"]), "loop_ratio": median_ratio(t["both"], t["step"]),
           "ops": count_ops(enorm.step),
           "step_ms": 1e3 * statistics.median(t["step"]), "cycle_ms": 1e3 * statistics.median(t["cycle"]),
           "groups": len(enorm.groups), "units": enorm.num_units, "batch": batch, "px": px,
           "pass_ratio": median_ratio(t["pass"], t["step"]), "pass_loop_ratio": median_ratio(t["both_pass"], t["step"])}
    if "cycle_fused" in t:
        out.update(fused_ratio=median_ratio(t["cycle_fused"], t["step"]),
                   fused_loop_ratio=median_ratio(t["both_fused"], t["step"]),
                   fused_ms=1e3 * statistics.median(t["cycle_fused"]), fused_ops=count_ops(fused.step))
    if "cycle_graph" in t:
        out.update(graph_ratio=median_ratio(t["cycle_graph"], t["step"]),
                   graph_loop_ratio=median_ratio(t["both_graph"], t["step"]),
                   graph_ms=1e3 * statistics.median(t["cycle_graph"]))
    return out


def field_throughput(field: str, plan: Plan, device, data: list[str], *, workers: int = 0) -> dict:
    """Examples (rays or points) per second of wcnorm's step and of the reference loop,
    `norm=none` (the reference has no weight method), the preset's network at the plan's
    field budget; `data`: the overrides of the bench's scene or shape. The two steps
    are timed interleaved, so the speedup is a paired ratio."""
    cfg = field_config(field, plan.field_budget, data, norm="none", device=device)
    batch, unit = int(cfg.trainer.batch_size), FIELDS[field][1]
    builders = {"wcnorm": lambda: wcnorm_field_step(cfg, device),
                "reference": lambda: reference_field_step(cfg, device, workers=workers)}
    steps, out = {}, {"batch": batch, "unit": unit, "shape": network_shape(cfg)}
    for who, build in builders.items():
        with peak_memory(device) as mem:
            steps[who], setup = build()
            steps[who]()
        out[who] = {"setup": setup, "mem_mib": mem["mib"], "mem_how": mem["how"]}
    t = time_step(steps, warmup=plan.warmup, repeats=plan.repeats, steps=plan.steps, device=device)
    for who, step in steps.items():
        step_s = statistics.median(t[who])
        out[who].update(step_s=step_s, per_s=batch / step_s, finite=math.isfinite(float(step())))
    out["speedup"] = median_ratio(t["reference"], t["wcnorm"])
    return out


def field_wc_overhead(field: str, plan: Plan, device, data: list[str]) -> dict:
    """Step time of the field MLP with WC (rows, p = 2: the preset's) over without,
    fixed batch, interleaved repeats. A second, identical step without WC is timed in
    the same rotation (an A/A control): its ratio to the first is what the same
    comparison reads when there is no difference, the resolution of the WC ratio on
    this machine at its current load. The WC step with its effective weights computed
    lazily, at each layer's first call (`Trainer.batch_weights = False`), is timed in the
    same rotation too: what computing them all together saves."""
    cfgs = {norm: field_config(field, plan.field_budget, data, norm=norm, device=device) for norm in ("none", "wc")}
    steps, models = {}, {}
    for norm, cfg in cfgs.items():
        steps[norm], models[norm] = fixed_field_step(cfg, device, with_model=True)
    steps["none_again"] = fixed_field_step(cfgs["none"], device)
    steps["wc_lazy"] = fixed_field_step(cfgs["wc"], device, batch_weights=False)
    t = time_step(steps, warmup=plan.warmup, repeats=plan.repeats, steps=plan.steps, device=device)
    return {"ratio": median_ratio(t["wc"], t["none"]), "control": median_ratio(t["none_again"], t["none"]),
            "lazy": median_ratio(t["wc_lazy"], t["none"]),
            "none_ms": 1e3 * statistics.median(t["none"]),
            "wc_ms": 1e3 * statistics.median(t["wc"]), "batch": int(cfgs["wc"].trainer.batch_size),
            "shape": network_shape(cfgs["wc"]), "kernel_ms": _kernel_ms(models["wc"], plan, device)}
