"""Time to the first step: how long `wcnorm train` takes from the command to its first
training step, in a fresh Python process (nothing imported or cached in memory).

The process runs `wcnorm train <overrides>` with one change: `Trainer.train_step` is
wrapped so that the first step, once done, prints the times and ends the process. The
figures, from the process start: `import_s`, to the end of importing the training
modules (torch, Hydra, wcnorm's); `ready_s`, to the start of the first step (imports,
Hydra composition, data, model build, optimizer, ENorm trace, run directory); and
`first_step_s`, to the end of the first step (whose one-off costs, such as the CPU
kernels' first allocations, make it slower than the steps after it). The modules the
run had imported when it started its first step are listed, so an import that the run
does not need shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

# Imported by a run only when it needs them (a tracker, a field task, an ImageNet-size
# model, torch.compile, the report): the list says which the first step pulled in.
HEAVY = ("torchvision", "torch._dynamo", "matplotlib", "pandas", "trimesh", "scipy", "skimage", "igl",
         "sklearn", "optuna", "mlflow", "tensorboard", "wandb")

PROBE = r"""
import os, sys, time
start = float(sys.argv[1])
from wcnorm.training import trainer, train  # the training modules, as `wcnorm train` imports them
from wcnorm.cli import main
imported = time.time() - start
first = trainer.Trainer.train_step
def report(self, *batch):
    ready = time.time() - start
    heavy = [m for m in {heavy} if m in sys.modules]
    first(self, *batch)
    print(f"FIRST_STEP {{imported:.3f}} {{ready:.3f}} {{time.time() - start:.3f}} {{','.join(heavy) or '-'}}",
          flush=True)
    os._exit(0)
trainer.Trainer.train_step = report
sys.argv = ["wcnorm", "train", *sys.argv[2:]]
sys.exit(main())
"""

# The runs measured: the demo as shipped, and ResNet-18 on synthetic CIFAR-size images
# (no download), both on the CPU.
RUNS = {
    "demo": ["experiment=demo"],
    "resnet18": ["model=resnet18", "norm=bn", "dataset=synthetic", "dataset.train_size=512",
                 "dataset.test_size=128", "trainer.batch_size=128", "trainer.epochs=1"],
}


def first_step(overrides: list[str], *, threads: int | None = None, timeout: float = 600) -> dict:
    """{import_s, ready_s, first_step_s, modules} of `wcnorm train <overrides>` in a fresh process
    (its run directory in a temporary folder, on the CPU)."""
    with tempfile.TemporaryDirectory(prefix="wcnorm-startup-") as out:
        args = [*overrides, f"out_dir={out}", "trainer.device=cpu", "trainer.progress=false"]
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        code = PROBE.format(heavy=repr(HEAVY))
        start = time.time()
        done = subprocess.run([sys.executable, "-c", code, repr(start), *args], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=out)
    line = next((x for x in done.stdout.splitlines() if x.startswith("FIRST_STEP ")), None)
    if line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"wcnorm train {' '.join(overrides)} reached no training step: {' | '.join(tail)}")
    _, imported, ready, total, modules = line.split()
    return {"import_s": float(imported), "ready_s": float(ready), "first_step_s": float(total),
            "modules": modules.replace(",", " ")}
