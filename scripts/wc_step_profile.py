"""Where WC's extra step time goes on a field MLP: the training step of `wcnorm bench`'s
fields part (the preset's network at `budget=cpu`, `Trainer.train_step` on one fixed
batch, one thread, freed memory kept as `wcnorm train` keeps it), without and with WC,
profiled per op (torch.profiler, self CPU time), interleaved, and each op's time per
step with WC minus without.

    python scripts/wc_step_profile.py [--field occupancy|nerf] [--steps 20] [--rounds 5]

Prints one CSV row per op: its self CPU time per step without and with WC (µs), the
difference, and whether WC's own function (`_RowEquilibrateMany`, all of a step's
conditioned weights at once: the row norms, the clamp, the division and their
backward) dispatches it; the last rows are the totals.
Each round profiles `--steps` steps of each model, alternating, so both see the same
machine; the medians over rounds are printed. The profiler's own per-op cost inflates
ops that are many and small alike in both steps (results/bench/README.md, "Where WC's
step time goes").
"""

import argparse
import csv
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from wcnorm.bench.field_steps import FIELDS, field_config, field_data, fixed_field_step
from wcnorm.training.allocator import keep_freed_memory

# The ops WC's own function dispatches (`_RowEquilibrate*` in wcnorm/methods/wc.py: the
# row norms, the clamp, the division; in the backward also the product, sum, mask and
# addcmul). A name here may also occur in the step without WC, so an op's difference is
# the attribution, not its total.
WC_OPS = {"aten::linalg_vector_norm", "aten::clamp_min", "aten::div", "aten::div_", "aten::gt", "aten::mul",
          "aten::sum", "aten::where", "aten::addcmul"}


def wc_own(op: str) -> bool:
    return op in WC_OPS or "_RowEquilibrate" in op  # its autograd node and the engine's call of it


def field_step(field: str, norm: str, data: list[str]):
    """The bench's fixed-batch training step of `field`'s preset with `norm`."""
    return fixed_field_step(field_config(field, "cpu", data, norm=norm), "cpu")


def self_times(step, steps: int) -> dict[str, float]:
    """Self CPU µs per step of each op name over `steps` profiled steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {e.key: e.self_cpu_time_total / steps for e in prof.key_averages()}


def profile_rounds(runs: dict, steps: int, rounds: int) -> dict:
    """{wc: {op: [µs per step, one per round]}}, after a warm-up of each step."""
    for step in runs.values():
        for _ in range(5):
            step()
    per_round = {wc: defaultdict(list) for wc in runs}
    for _ in range(rounds):
        for wc, step in runs.items():
            times = self_times(step, steps)
            for op in set(times) | set(per_round[wc]):
                per_round[wc][op].append(times.get(op, 0.0))
    return per_round


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--field", choices=sorted(FIELDS), default="occupancy")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    for name in ("steps", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    kept = keep_freed_memory()
    with tempfile.TemporaryDirectory(prefix="wcnorm-profile-") as folder:
        data = field_data(Path(folder), args.field)
        runs = {wc: field_step(args.field, "wc" if wc else "none", data) for wc in (False, True)}
        per_round = profile_rounds(runs, args.steps, args.rounds)
    report(per_round, kept, args)


def report(per_round: dict, kept: bool, args) -> None:
    """The CSV described in the module docstring, on stdout."""
    ops = set(per_round[False]) | set(per_round[True])
    med = {wc: {op: statistics.median(per_round[wc].get(op, [0.0])) for op in ops} for wc in per_round}
    print(f"# {args.field}, freed memory kept: {kept}; µs per step, median of {args.rounds} rounds "
          f"of {args.steps} steps")
    out = csv.writer(sys.stdout)
    out.writerow(["op", "none_us", "wc_us", "diff_us", "wc_own"])
    for op in sorted(ops, key=lambda op: -abs(med[True][op] - med[False][op])):
        none, wc = med[False][op], med[True][op]
        out.writerow([op, f"{none:.1f}", f"{wc:.1f}", f"{wc - none:.1f}", wc_own(op)])
    for label, keep in (("total", lambda op: True), ("total_wc_own", wc_own),
                        ("total_shared", lambda op: not wc_own(op))):
        none, wc = (sum(med[w][op] for op in ops if keep(op)) for w in (False, True))
        out.writerow([label, f"{none:.1f}", f"{wc:.1f}", f"{wc - none:.1f}", ""])


if __name__ == "__main__":
    main()
