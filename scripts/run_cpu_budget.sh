#!/usr/bin/env bash
# Each named preset's grid at budget=cpu (conf/budget/cpu.yaml) on the small real
# subsets in ../shared/data: about 45 minutes per preset on a 2-core machine.
#
#     bash scripts/run_cpu_budget.sh wc_resnet wc_vit     # runs -> runs/cpu/<preset>/
#     make tables RUNS=runs/cpu                           # tables -> results/<preset>/
#
# The subset that stands in for each preset's dataset is the one the preset declares
# (`protocol.cpu.stand_in` in conf/experiment/<preset>.yaml, read through Hydra by
# `python -m wcnorm.presets`): the 5,170 / 1,017 real CIFAR-10 images
# (cifar10-partial.npz) for the CIFAR-10 presets, the 10-class ImageNet subset
# (imagenet-mini/, 64 px) for the ImageNet small-batch study. Any other preset runs on
# its own data; a preset without a CPU budget (wc_googlenet_c100, wc_vit_imagenet)
# refuses it with its reason.
#
# Two runs at a time, one thread each (Hydra's joblib launcher, conf/hydra/launcher/
# local_parallel.yaml): on these small models two single-threaded runs use two cores
# better than one run on two threads; the times in each preset's `protocol.cpu` assume it.
# Rerunning is safe: a run directory is named by its config, so finished runs are
# skipped and interrupted ones resume from their last epoch.
#
# The tuned protocol (docs/search.md, "The tuned protocol"): PROTOCOL=tuned
#
#     PROTOCOL=tuned bash scripts/run_cpu_budget.sh wc_fc [-- norm=bn,bn_wc]
#
#   1. searches each grid point's rate on the ENorm paper's grid (+search=lr_grid, on the
#      validation split)                                   -> $OUT/lr_grid/<preset>/
#   2. tables it (`wcnorm search`)                         -> $RESULTS/<preset>/tuned/search.*
#      with the trials of an earlier part (`--prior` its search_trials.csv, if the folder
#      has one) at the points this part did not search
#   3. trains the preset's seeds at each point's rate      -> $TUNED_OUT/<preset>/
#      except where $RESULTS/<preset>/runs.csv (the shared grid's runs) or
#      $RESULTS/<preset>/tuned/runs.csv (an earlier part's) already has runs at that rate
#      (`wcnorm report ... --tuned ... --prior` each of them carries them).
# Overrides after `--` narrow the search's grid (stated in the folder's README); the
# preset's seeds at the rates found are trained for every point searched.
#
# Environment: PROTOCOL shared (default): the preset's grid at its own rates; tuned: above
#              RESULTS where the tuned protocol's search tables go (default results)
#              TUNED_OUT where its runs at the tuned rates go (default runs/tuned: apart from
#                      $OUT, so that no shared-rate table pools two rates in a cell;
#                      its trials, with their validation split, are never tabled as results)
#              DATA    the folder holding cifar10-partial.npz and imagenet-mini/
#                      (default ../shared/data, relative to the repository root)
#              OUT     where the runs go (default runs/cpu)
#              JOBS    runs at a time (default 2; 1: one after another, no plugin needed)
#              BIN     where wcnorm is (default .venv/bin)
#              PYTHON  the Python that has wcnorm installed (default $BIN/python)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/cpu}
JOBS=${JOBS:-2}
PYTHON=${PYTHON:-$BIN/python}
PROTOCOL=${PROTOCOL:-shared}
RESULTS=${RESULTS:-results}
TUNED_OUT=${TUNED_OUT:-runs/tuned}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

presets=() narrow=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; narrow=("$@"); break; fi
  presets+=("$1"); shift
done
if [ ${#presets[@]} -eq 0 ] || [[ "$PROTOCOL" != shared && "$PROTOCOL" != tuned ]]; then
  echo "usage: [PROTOCOL=shared|tuned] $0 PRESET... [-- OVERRIDE...]  (the presets of conf/experiment/ with a protocol.cpu)" >&2
  exit 2
fi
launcher=()
if [ "$JOBS" -gt 1 ]; then
  launcher=(hydra/launcher=local_parallel "hydra.launcher.n_jobs=$JOBS")
fi

# The subset that stands in for each preset's dataset, as the preset declares it: one
# line a preset, its name and then its overrides, tab-separated; none for a name that
# is no preset (the helper says so).
declared=$("$PYTHON" -m wcnorm.presets --budget cpu --data "$DATA" "${presets[@]}")

# The tuned protocol of one preset (steps 1-3 above).
tuned() {
  local preset=$1 todo cmd words status=0 tuned_dir=$RESULTS/$1/tuned prior=()
  shift
  # an earlier part's trials, tabled with this part's (its run directories may be gone)
  [ -f "$tuned_dir/search_trials.csv" ] && prior=(--prior "$tuned_dir/search_trials.csv")
  "$BIN/wcnorm" train -m "experiment=$preset" budget=cpu +search=lr_grid "out_dir=$OUT/lr_grid/$preset" \
    "$@" "${launcher[@]}" "${narrow[@]}" || return 1
  "$BIN/wcnorm" search "$OUT/lr_grid/$preset" --preset "$preset" --out "$tuned_dir" "${prior[@]}" >/dev/null \
    || return 1
  todo=$("$PYTHON" -m wcnorm.report.tuned "$tuned_dir/search.csv" "$preset" \
    "$RESULTS/$preset/runs.csv" "$tuned_dir/runs.csv") || return 1
  while IFS= read -r cmd; do  # `wcnorm train -m experiment=... norm=... optim.lr=...`, one point
    [ -n "$cmd" ] || continue
    read -r -a words <<< "$cmd"
    echo "== $preset: ${words[*]:3}"
    # a point whose runs diverged is a result: the other points still train
    "$BIN/wcnorm" "${words[@]:1}" "out_dir=$TUNED_OUT/$preset" "$@" "${launcher[@]}" || status=1
  done <<< "$todo"
  return $status
}

failed=()
for preset in "${presets[@]}"; do
  line=$(awk -F'\t' -v p="$preset" '$1 == p' <<< "$declared")
  if [ -z "$line" ]; then
    failed+=("$preset")
    continue
  fi
  IFS=$'\t' read -r -a fields <<< "$line"
  data=("${fields[@]:1}")
  echo "== $preset ($PROTOCOL)"
  if [ "$PROTOCOL" = tuned ]; then
    tuned "$preset" "${data[@]}" || failed+=("$preset")
  else
    "$BIN/wcnorm" train -m "experiment=$preset" budget=cpu "out_dir=$OUT/$preset" \
      "${data[@]}" "${launcher[@]}" "${narrow[@]}" || failed+=("$preset")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]} (rerun to resume; finished runs are skipped)" >&2
  exit 1
fi
if [ "$PROTOCOL" = tuned ]; then
  for preset in "${presets[@]}"; do
    echo "done; tables: $BIN/wcnorm report $TUNED_OUT --out $RESULTS --presets $preset --tuned $RESULTS/$preset/tuned/search.csv --prior $RESULTS/$preset/runs.csv --prior $RESULTS/$preset/tuned/runs.csv (the second if it exists)"
  done
else
  echo "done; tables: make tables RUNS=$OUT"
fi
