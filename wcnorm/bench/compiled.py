"""`trainer.compile=true` against eager, on the networks where it may pay on a CPU: the
field MLPs (their presets at the plan's field budget, with WC) and the ENorm FC net
(p = 15, batch 256).

Each network is built twice, the same run but for `trainer.compile`, on one fixed batch.
The figures: the first step of each (the compiled one includes compiling), the steps
after it timed interleaved (their ratio), and the steps after which compiling has paid
for itself (infinite where the compiled step is not faster).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from .field_steps import FIELDS, build_field_run, field_config, field_data, network_shape
from .plans import Plan
from .setups import build_run
from .timing import median_ratio, sync, time_step

FC_DEPTH, FC_BATCH = 15, 256  # the ENorm paper's deepest FC net in this project's grid, its batch


def _trainer(model: str, plan: Plan, device, data: list[str] | None, compile: bool):
    """(trainer, shape, batch) of the run measured for `model`."""
    if model in FIELDS:
        cfg = field_config(model, plan.field_budget, data, norm="wc", device=device)
        cfg.trainer.compile = compile
        return build_field_run(cfg, device).trainer, network_shape(cfg), int(cfg.trainer.batch_size)
    run = build_run(model, plan.px, batch=FC_BATCH, device=device, norm="enorm", compile=compile,
                    options={"depth": FC_DEPTH}, overrides=["norm.enorm.enabled=false"])
    return run.trainer, f"fc p={FC_DEPTH}, width 500", FC_BATCH


def compile_vs_eager(model: str, plan: Plan, device, folder: Path) -> dict:
    """Eager and compiled steps of `model` (see the module docstring)."""
    data = field_data(folder, model) if model in FIELDS else None
    steps, first = {}, {}
    for name in ("eager", "compiled"):
        trainer, shape, batch = _trainer(model, plan, device, data, name == "compiled")
        fixed = next(iter(trainer.train_loader))
        steps[name] = (lambda t, b: lambda: t.train_step(*b)[0])(trainer, fixed)
        sync(device)
        t0 = time.perf_counter()
        steps[name]()
        sync(device)
        first[name] = time.perf_counter() - t0
    t = time_step(steps, warmup=plan.warmup, repeats=plan.repeats, steps=plan.steps, device=device)
    eager, compiled = statistics.median(t["eager"]), statistics.median(t["compiled"])
    gain = eager - compiled
    return {"shape": shape, "batch": batch, "eager_ms": 1e3 * eager, "compiled_ms": 1e3 * compiled,
            "ratio": median_ratio(t["compiled"], t["eager"]), "eager_first_s": first["eager"],
            "compiled_first_s": first["compiled"],
            "break_even_steps": (first["compiled"] - first["eager"]) / gain if gain > 0 else math.inf}
