#!/usr/bin/env bash
# Each named preset's grid at budget=cpu (conf/budget/cpu.yaml) on the small real
# subsets in ../shared/data: about 45 minutes per preset on a 2-core machine.
#
#     bash scripts/run_cpu_budget.sh wc_resnet wc_vit     # runs -> runs/cpu/<preset>/
#     make tables RUNS=runs/cpu                           # tables -> results/<preset>/
#
# The subset that stands in for each preset's dataset is added on the command line:
# the 5,170 / 1,017 real CIFAR-10 images (cifar10-partial.npz) for the CIFAR-10 presets
# (the FC studies enorm_fc and wc_fc included), which also leaves out their CIFAR-100
# points (the 486-image CIFAR-100 subset cannot support a comparison), and the 10-class ImageNet subset (imagenet-mini/, 64 px) for
# the ImageNet small-batch study. Any other preset runs on its own data; a preset
# without a CPU budget (wc_googlenet_c100, wc_vit_imagenet) refuses it with its reason.
#
# Two runs at a time, one thread each (Hydra's joblib launcher, conf/hydra/launcher/
# local_parallel.yaml): on these small models two single-threaded runs use two cores
# better than one run on two threads; the times in each preset's `protocol.cpu` assume it.
# Rerunning is safe: a run directory is named by its config, so finished runs are
# skipped and interrupted ones resume from their last epoch.
#
# Environment: DATA    the folder holding cifar10-partial.npz and imagenet-mini/
#                      (default ../shared/data, relative to the repository root)
#              OUT     where the runs go (default runs/cpu)
#              JOBS    runs at a time (default 2; 1: one after another, no plugin needed)
#              BIN     where wcnorm is (default .venv/bin)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/cpu}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ $# -eq 0 ]; then
  echo "usage: $0 PRESET...  (wc_resnet wc_googlenet wc_densenet wc_vit enorm_fullconv" \
       "enorm_resnet_small_batch enorm_resnet_imagenet_small_batch enorm_fc wc_fc" \
       "wc_nerf wc_shape)" >&2
  exit 2
fi
launcher=()
if [ "$JOBS" -gt 1 ]; then
  launcher=(hydra/launcher=local_parallel "hydra.launcher.n_jobs=$JOBS")
fi

failed=()
for preset in "$@"; do
  case "$preset" in  # the subset that stands in for the preset's dataset
    wc_resnet | wc_variants | wc_googlenet | wc_densenet | wc_vit | enorm_fullconv | enorm_resnet_small_batch \
      | enorm_fc | wc_fc)
      data=(dataset=npz "dataset.path=$DATA/cifar10-partial.npz") ;;
    enorm_resnet_imagenet_small_batch)
      data=(dataset=imagefolder "dataset.root=$DATA/imagenet-mini" dataset.image_size=64) ;;
    *)
      data=() ;;
  esac
  echo "== $preset"
  "$BIN/wcnorm" train -m "experiment=$preset" budget=cpu "out_dir=$OUT/$preset" \
    "${data[@]}" "${launcher[@]}" || failed+=("$preset")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]} (rerun to resume; finished runs are skipped)" >&2
  exit 1
fi
echo "done; tables: make tables RUNS=$OUT"
