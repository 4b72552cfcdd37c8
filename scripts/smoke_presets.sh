#!/usr/bin/env bash
# Every paper preset's whole grid at budget=smoke (1 epoch of 2 batches, CPU, one seed)
# on synthetic data, then its tables, figures and claims: a check that each preset's
# pipeline runs end to end. Its accuracies mean nothing (the labels are random). The
# neural-field presets (wc_nerf, wc_shape) have no synthetic stand-in: their tiny smoke
# networks train on their own scenes and shapes (../shared/data, or WCNORM_SHARED_DATA).
#
#     bash scripts/smoke_presets.sh            # runs -> runs/smoke, tables -> results/smoke
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-runs/smoke}
OUT=${OUT:-results/smoke}

for file in conf/experiment/*.yaml; do
  preset=$(basename "$file" .yaml)
  [ "$preset" = demo ] && continue
  data=(dataset=synthetic dataset.train_size=64 dataset.test_size=32)
  case "$preset" in
    *imagenet*)       data+=(dataset.image_size=224 dataset.num_classes=1000 diagnostics.conditioning=false) ;;
    *c100*)           data+=(dataset.num_classes=100) ;;
    wc_nerf|wc_shape) data=() ;;  # their own real data
  esac
  echo "== $preset"
  "$BIN/wcnorm" train -m "experiment=$preset" budget=smoke "${data[@]}" "out_dir=$RUNS/$preset"
done
"$BIN/wcnorm" report "$RUNS" --out "$OUT" --budgets smoke
