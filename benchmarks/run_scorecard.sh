#!/usr/bin/env bash
# Issue 27: the scorecard's cells, one `detector_choice.py` run each (the choice reads ID training data only; the
# OOD sets are read afterwards, to measure it). Resumable: a cell whose JSON exists is skipped.
#   nice -n 19 bash benchmarks/run_scorecard.sh > ~/wood-runs/scorecard.log 2>&1 &
# then: python benchmarks/scorecard.py (table + plot from the JSONs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/scorecard"
CHOICE_ARGS=()
# shellcheck source=benchmarks/cells.sh
source "$ROOT/benchmarks/cells.sh"
# shellcheck disable=SC2086
cell fmnist-resnet14-grey resnet14 "$RUNS/fmnist-resnet14/resnet14.safetensors" "$RUNS/data/fashion-mnist" $GREY
cell cifar6-resnet14-near resnet14 "$RUNS/cifar6-resnet14/resnet14.safetensors" "$RUNS/data/cifar10-6v4" \
  "$RUNS/data/cifar10-6v4/ood/cifar10-unknown4.npz"
cell cifar6b-resnet14-near resnet14 "$RUNS/cifar6b-resnet14/resnet14.safetensors" "$RUNS/data/cifar10-k234567" \
  "$RUNS/data/cifar10-k234567/ood/cifar10-unknown4.npz"
cell cifar6-resnet14-far resnet14 "$RUNS/cifar6-resnet14/resnet14.safetensors" "$RUNS/data/cifar10-6v4" $FAR
cell cifar10-resnet20-far resnet20 "$SHARED/models/cifar10_resnet/resnet20-12fca82f.th" "$SHARED/data/cifar10" $FAR
cell cifar10-resnet56-far resnet56 "$SHARED/models/cifar10_resnet/resnet56-4bfd9763.th" "$SHARED/data/cifar10" $FAR
cell cifar10-wrn16_4-far wrn16_4 "$RUNS/cifar10-wrn16_4/wrn16_4.safetensors" "$SHARED/data/cifar10" $FAR
