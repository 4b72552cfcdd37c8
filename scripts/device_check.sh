#!/usr/bin/env bash
# The GPU checks in one go, on a CUDA machine that has PyTorch but maybe no internet:
#
#   1. tests/test_cuda.py: the fast path (GPU data, bf16, channels_last, fused SGD, no host
#      sync in the step loop, ENorm's CUDA graph, torch.compile) and the runner on the GPU;
#   2. `wcnorm bench --size gpu`: throughput vs the plain loop, WC and ENorm overheads (WC's
#      kernels apart, the fused cycle of the FC net at p = 15), the fields, MFU: the CPU's ratios;
#   3. a real-size epoch: ResNet-18, 50,000 CIFAR-size images, batch 512, through `wcnorm train`;
#   (4. on request: the torch.compile tests, which compile cold.)
#
#     bash scripts/device_check.sh                 # all three, into $OUT (default results/device-check)
#     bash scripts/device_check.sh bench epoch     # some of them
#     bash scripts/device_check.sh compile         # the torch.compile tests (cold compiles: minutes)
#
# Each phase has its own time limit (seconds: TESTS_S, BENCH_S, EPOCH_S, COMPILE_S); the
# default three end within about eight minutes. Python packages that the machine lacks
# (Hydra, OmegaConf) are installed from .whl/ (git-ignored: copy it along), which `make
# wheels` fills on a machine with the package index. wcnorm itself is installed afresh
# into a scratch folder, so its configs resolve as they do for users.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-results/device-check}
SITE=${SITE:-/tmp/wcnorm-site}
PHASES=${*:-tests bench epoch}
rm -rf "$SITE"  # pip --target never replaces what is there: a rerun must not test old code
mkdir -p "$OUT" "$SITE"

if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "Hydra/OmegaConf are missing and .whl/ is empty: run 'make wheels' where pip works"; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl || exit 2
fi
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . || exit 2
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1
# -P: the installed copy, not the source folder (which has no wcnorm.conf package)
run() { "$PY" -P "$@"; }
run -c "import hydra, omegaconf, yaml, packaging, tqdm, numpy, pandas, torchvision, pytest, wcnorm.conf" || {
  echo "a package wcnorm needs is missing on this machine (see the import error above)"; exit 2; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  run -c "import torch, wcnorm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'wcnorm', wcnorm.__version__)"
} 2>&1 | tee "$OUT/device.txt"

cuda_tests() { timeout "$1" "$PY" -P -m pytest -q -rs -p no:cacheprovider -m "$2" tests/test_cuda.py 2>&1 | tee "$OUT/$3"; }
tests() { cuda_tests "${TESTS_S:-150}" "cuda and not slow" cuda-tests.log; }
compile() { cuda_tests "${COMPILE_S:-420}" "cuda and slow" cuda-compile-tests.log; }
bench() { timeout "${BENCH_S:-270}" "$PY" -P -m wcnorm bench --size gpu --out "$OUT" 2>&1 | tee "$OUT/bench.log"; }
epoch() {
  local runs rc
  runs=$(mktemp -d)
  timeout "${EPOCH_S:-90}" "$PY" -P -m wcnorm train model=resnet18 norm=bn dataset=synthetic \
    dataset.train_size=50000 dataset.test_size=10000 trainer.batch_size=512 trainer.epochs=3 \
    optim.lr=0.4 trainer.progress=false diagnostics.conditioning=false "out_dir=$runs" 2>&1 | tee "$OUT/epoch.log"
  rc=$?
  find "$runs" -name metrics.csv -exec cp {} "$OUT/epoch-metrics.csv" \;
  return $rc
}

status=0
for phase in $PHASES; do
  echo "== $phase"
  case "$phase" in
    tests|bench|epoch|compile) "$phase" ;;
    *) echo "unknown phase '$phase' (tests, bench, epoch, compile)"; false ;;
  esac || { echo "== $phase: failed (exit $?)"; status=1; }
done
exit $status
