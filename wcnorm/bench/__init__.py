"""`wcnorm bench`: how fast wcnorm's training step is, and what WC and ENorm cost.

Five parts, all in one process, on synthetic data (nothing is downloaded):

* throughput: images/s and peak memory of wcnorm's step (the run `wcnorm train`
  assembles: `ArrayLoader` on the device + `Trainer.train_step` with bf16 autocast,
  channels_last and a fused optimizer on CUDA, optionally torch.compile) against a plain
  torchvision-style loop (DataLoader + per-sample CPU transforms, fp32, plain SGD), same
  model, images and batch;
* wc: step time of BN+WC over step time of BN, interleaved repeats, and the tensor ops
  each step dispatches;
* enorm: time of one ENorm cycle over time of one training step (no BN, and BN+ENorm), and
  the number of tensor ops one cycle dispatches (device-independent; the cycle reads each
  weight once, so on a GPU its time is expected to follow its kernel launches);
* mfu: FLOPs of the training step (FlopCounterMode, forward + backward) per second of
  wcnorm's step, over the device's dense bf16 peak;
* fields: rays/s of the NeRF and points/s of the occupancy network of the field
  presets (wc_nerf, wc_shape) against a plain PyTorch loop of the same network, and
  WC's overhead on each field MLP, on a scene and a shape the bench writes
  (`fields`);
* startup (only when asked for): seconds from `wcnorm train` to its first training
  step, in a fresh process, for the demo and ResNet-18 (`startup`);
* compile (only when asked for): `trainer.compile=true` against eager on the field MLPs
  and the ENorm FC net, compile time included (`compiled`).

The wc and fields parts also time WC's kernels alone (E(W) W forward and backward on
the model's weights), so a step's WC overhead splits into the method and the rest; the
enorm part also times the one-visit cycle of a chain (`ENorm(fused=True)`) where the
network is one (the FC net).

Every figure is the median over `repeats` blocks of `steps` back-to-back calls, after
`warmup` untimed calls (compilation, cudnn autotuning, allocator growth), with the
device drained (synchronize) before each timer read, and denormal floats flushed to
zero (`flushed_denormals`). The figures themselves go to
`results/bench/<device>.csv`.

The modules, bottom up: `timing` and `memory` (how a figure is read), `counting` (ops
and FLOPs), `plans` (the sizes), `setups` and `fields` (the steps compared), `measure` (the figures of one
set-up), `parts` (the parts as CSV rows), `command` (the command line).
"""

from .command import COLUMNS, flushed_denormals, format_table, main, slug, write_rows
from .counting import OpCounter, count_ops, peak_flops, step_flops
from .measure import enorm_overhead, reference_throughput, wc_overhead, wcnorm_throughput
from .memory import peak_memory
from .parts import DEFAULT_PARTS, PARTS, RUNNERS
from .plans import SIZES, Plan, parse_spec
from .setups import bench_config, build_reference, build_run, build_trainer, build_wcnorm
from .timing import median_ratio, time_step

__all__ = ["COLUMNS", "DEFAULT_PARTS", "PARTS", "flushed_denormals", "RUNNERS", "SIZES", "OpCounter", "Plan", "bench_config", "build_reference",
           "build_run", "build_trainer", "build_wcnorm", "count_ops", "enorm_overhead", "format_table",
           "main", "median_ratio", "parse_spec", "peak_flops", "peak_memory", "reference_throughput",
           "slug", "step_flops", "time_step", "wc_overhead", "wcnorm_throughput",
           "write_rows"]
