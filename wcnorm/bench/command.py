"""`wcnorm bench`: how fast wcnorm's training step is, and what WC and ENorm cost.

The command line: which parts, which size, where the CSV goes (`<out>/<device>.csv`,
rewritten after every part, so a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import time
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..errors import WcnormError
from ..models import MODELS
from ..outputs import atomic_write_text, device_name
from ..training.allocator import keep_freed_memory
from ..training.assemble import resolve_device
from .parts import DEFAULT_PARTS, PARTS, RUNNERS
from .plans import COMPILE_MODELS, SIZES
from .timing import CLOCKS, use_clock

COLUMNS = ["date", "device", "device_name", "torch_version", "threads", "clock", "malloc", "size", "part",
           "model", "setup", "shape", "batch", "metric", "value", "unit", "note"]
TABLE_COLUMNS = COLUMNS[COLUMNS.index("part"):]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wcnorm bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="figures: median over repeats after warm-up; see `wcnorm.bench`")
    p.add_argument("--size", choices=SIZES, help="tiny (tests), cpu, gpu (default: gpu on CUDA, else cpu)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--only", default=",".join(DEFAULT_PARTS),
                   help=f"comma-separated parts among {','.join(PARTS)} (default: {','.join(DEFAULT_PARTS)})")
    p.add_argument("--models", help="throughput/MFU models, e.g. resnet18,vit,resnet18@224 (default: the size's); "
                   f"with --only enorm, its models; with --only compile, among {','.join(COMPILE_MODELS)}")
    p.add_argument("--batch", type=int, help="override the throughput batch")
    p.add_argument("--overhead-batch", type=int, help="override the batch of the WC and ENorm ratios")
    p.add_argument("--repeats", type=int, help="override the number of timed blocks")
    p.add_argument("--compile", action="store_true", help="torch.compile wcnorm's model (never the reference)")
    p.add_argument("--workers", type=int, help="reference DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice; startup: "
                   "the trained process's OMP_NUM_THREADS)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall, or cpu: the main thread's CPU time (a shared CPU, with --threads 1)")
    p.add_argument("--peak-tflops", type=float, help="the device's peak for MFU, if not in the built-in table")
    p.add_argument("--out", default="results/bench", help="folder of <device-slug>.csv")
    return p


def slug(device) -> str:
    """The CSV's name: the GPU's name, or cpu-<the CPU's name>, lowercase, dashed."""
    name = device_name(device)
    name = name if torch.device(device).type == "cuda" else f"cpu-{name}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def format_table(rows: list[dict]) -> str:
    cells = [[f"{r[c]:.4g}" if c == "value" else str(r[c]) for c in TABLE_COLUMNS] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(TABLE_COLUMNS)]

    def line(xs):
        return "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()

    return "\n".join([line(TABLE_COLUMNS), line(["-" * w for w in widths]), *map(line, cells)])


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


@contextmanager
def flushed_denormals():
    """Denormal floats flushed to zero on the CPU while the bench measures (restored
    after: the process's other work keeps IEEE arithmetic). A network that keeps fitting
    one fixed batch drives gradients and optimizer state towards denormals, which make
    CPU arithmetic many times slower: the bench would time whichever variant has more
    of them, not the method."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def measure(parts, args, plan, device, env: dict, out: Path) -> list[dict]:
    """The chosen parts, in order; the CSV is rewritten after every part, so a run cut
    short keeps what it measured."""
    rows, cache = [], {}
    for part in (p for p in PARTS if p in parts):
        t0 = time.perf_counter()
        new = RUNNERS[part](args, plan, device, cache)
        rows += [{**env, **r} for r in new]
        write_rows(out, rows)
        print(f"{part}: {len(new)} figures in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parts_of(args) -> list[str]:
    return _names(args.only)


def check_args(args) -> str | None:
    """What is wrong with the command line, in one line (None if nothing), before any work."""
    parts = _names(args.only)
    if not parts:
        return f"--only {args.only!r} names no part; choose among {','.join(PARTS)}"
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        return f"unknown part(s) {unknown}; valid: {','.join(PARTS)}"
    if args.models is not None:
        specs = _names(args.models)
        if not specs:
            return f"--models {args.models!r} names no model; e.g. resnet18,vit,resnet18@224"
        # the compile part's networks, or the classifiers of throughput and mfu
        valid = COMPILE_MODELS if parts == ["compile"] else MODELS
        for spec in specs:
            name, _, px = spec.partition("@")
            if name not in valid:
                return f"--models: unknown model {name!r}; choose among {', '.join(valid)}"
            if px and not (px.isdigit() and int(px) > 0):
                return f"--models: {spec!r}: the size after @ must be a positive number of pixels"
    for flag in ("threads", "batch", "overhead_batch", "repeats"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            return f"--{flag.replace('_', '-')} must be a positive integer, got {value}"
    if args.workers is not None and args.workers < 0:
        return f"--workers must be 0 or more, got {args.workers}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"wcnorm bench: {problem}")
        return 2
    try:
        device = resolve_device(args.device)
    except WcnormError as err:
        print(f"wcnorm bench: {err}")
        return 2
    if args.clock == "cpu" and device.type != "cpu":
        print(f"wcnorm bench: --clock cpu times the CPU's own work; on {device} use --clock wall")
        return 2
    try:  # the C allocator as `wcnorm train` sets it (training.allocator), before any allocation
        malloc = ("keep" if keep_freed_memory() else "system") if device.type == "cpu" else ""
    except WcnormError as err:
        print(f"wcnorm bench: {err}")
        return 2
    use_clock(args.clock)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = args.size or ("gpu" if device.type == "cuda" else "cpu")
    plan = SIZES[size]
    if args.repeats:
        plan = replace(plan, repeats=args.repeats)
    if args.overhead_batch:
        plan = replace(plan, overhead_batch=args.overhead_batch)
    if args.models and parts_of(args) == ["compile"]:
        plan = replace(plan, compile_models=tuple(_names(args.models)))
    if args.models and parts_of(args) == ["enorm"]:
        plan = replace(plan, enorm_models=tuple(_names(args.models)))
    args.models = tuple(_names(args.models)) if args.models else plan.models
    parts = _names(args.only)
    env = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
           "device_name": device_name(device), "torch_version": torch.__version__,
           "threads": torch.get_num_threads(), "clock": args.clock, "malloc": malloc, "size": size}
    print(f"wcnorm bench: {env['device_name']} ({device}), torch {env['torch_version']}, "
          f"{env['threads']} threads, size {size}", flush=True)
    out = Path(args.out) / f"{slug(device)}.csv"
    with flushed_denormals():
        rows = measure(parts, args, plan, device, env, out)
    print(format_table(rows))
    print(f"wrote {out}")
    use_clock("wall")
    return 0
