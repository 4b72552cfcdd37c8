#!/usr/bin/env bash
# What `pip install wcnorm` gives a user, checked from outside the source tree:
#   1. builds wcnorm's wheel;
#   2. installs it into a fresh virtual environment (core dependencies only: no extras);
#   3. from a folder without the sources, runs the README's library example, checks that
#      `import wcnorm` with its library functions imports neither Hydra nor pandas, and
#      runs `wcnorm train` once on synthetic data (the configs ship in the wheel).
#
#     bash scripts/wheel_check.sh            # about 3 minutes, most of it installing PyTorch
#
# Environment: PYTHON  the Python to build and install with (default python3)
#              WORK    a folder for the wheel, the venv and the run (default: a new temporary one)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK/run"

echo "== building the wheel -> $WORK/dist"
"$PYTHON" -m pip wheel --no-deps --no-build-isolation -q -w "$WORK/dist" . 2>/dev/null \
  || "$PYTHON" -m pip wheel --no-deps -q -w "$WORK/dist" .
wheel=$(ls "$WORK"/dist/wcnorm-*.whl)

echo "== installing $(basename "$wheel") into a fresh venv"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$wheel"

echo "== the README's library example, from $WORK/run"
"$PYTHON" - "$WORK/run/example.py" <<'PY'
import re, sys
text = open("README.md").read()
open(sys.argv[1], "w").write(re.search(r"As a library.*?```python\n(.*?)```", text, re.S).group(1))
PY
cd "$WORK/run"
"$WORK/venv/bin/python" example.py
"$WORK/venv/bin/python" - <<'PY'
import sys

import torch

import wcnorm

where = wcnorm.__file__
assert "site-packages" in where, f"wcnorm was imported from {where}, not from the installed wheel"
wcnorm.weight_conditioning(torch.nn.Linear(4, 4))
heavy = sorted(m for m in ("hydra", "pandas", "trimesh", "skimage") if m in sys.modules)
assert not heavy, f"the library imported {heavy}"
print(f"installed wcnorm {wcnorm.__version__} at {where}: the library imports neither Hydra nor pandas")
PY
"$WORK/venv/bin/wcnorm" train dataset=synthetic model=enorm_fc dataset.image_size=8 dataset.train_size=128 \
  dataset.test_size=32 trainer.epochs=1 trainer.batch_size=32 trainer.device=cpu out_dir="$WORK/run/runs" \
  | tail -2
echo "wheel check passed ($WORK)"
