#!/usr/bin/env bash
# Issue 26: the pre-registered test of the seam-free ranking rule (benchmarks/README, 2026-12-03: phase-scrambled
# outliers in place of patch-shuffled ones) with every detector as candidate, on the seed-1 ResNet-14 cells
# (studies/run_pool_retest.sh trains them). One detector_choice.py run per cell: the shipped rule and the
# seam-free rule, both on the full pool, measured on the cell's real OOD sets after both choices.
# Resumable: a cell whose JSON exists is skipped.
#   nice -n 10 bash studies/run_seam_free_test.sh > ~/wood-runs/seam-free.log 2>&1 &
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/seam-free"
CHOICE_ARGS=(--candidates all --rules "object-destroying kinds" "seam-free object-destroying kinds")
# shellcheck source=benchmarks/cells.sh
source "$ROOT/benchmarks/cells.sh"
DATA="$RUNS/data"
# shellcheck disable=SC2086
cell fmnist-resnet14-seed1-grey resnet14 "$RUNS/fmnist-resnet14-seed1/resnet14.safetensors" "$DATA/fashion-mnist" $GREY
# shellcheck disable=SC2086
cell cifar6-resnet14-seed1-far resnet14 "$RUNS/cifar6-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-6v4" $FAR
cell cifar6b-resnet14-seed1-near resnet14 "$RUNS/cifar6b-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-k234567" \
  "$DATA/cifar10-k234567/ood/cifar10-unknown4.npz"
cell cifar6-resnet14-seed1-near resnet14 "$RUNS/cifar6-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-6v4" \
  "$DATA/cifar10-6v4/ood/cifar10-unknown4.npz"
# shellcheck disable=SC2086
cell cifar10-wrn16_4-far wrn16_4 "$RUNS/cifar10-wrn16_4/wrn16_4.safetensors" "$SHARED/data/cifar10" $FAR
