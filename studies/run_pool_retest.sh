#!/usr/bin/env bash
# Issue 26: the second pre-registered pool test (benchmarks/README, 2026-12-03, "shipped + multimahalanobis" vs the
# shipped pool, decided by pool_report.py --rule relative) on cells none of the earlier tests measured: the
# 4-epoch WRN-16-4 and new seeds (seed 1) of the three ResNet-14 classifiers. Trains what is missing first (weights in
# ~/wood-runs, records in benchmarks/results/models/*-seed1.json); a cell whose JSON exists is skipped (resumable).
#   nice -n 10 bash studies/run_pool_retest.sh > ~/wood-runs/pools-retest.log 2>&1 &
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/pools-retest"
CHOICE_ARGS=(--candidates shipped --pools "shipped + multimahalanobis" --rules "object-destroying kinds")
# shellcheck source=benchmarks/cells.sh
source "$ROOT/benchmarks/cells.sh"
DATA="$RUNS/data"
# shellcheck disable=SC2086
cell cifar10-wrn16_4-far wrn16_4 "$RUNS/cifar10-wrn16_4/wrn16_4.safetensors" "$SHARED/data/cifar10" $FAR
train_seeded cifar6b-resnet14 resnet14 "$DATA/cifar10-k234567" 10 1
cell cifar6b-resnet14-seed1-near resnet14 "$RUNS/cifar6b-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-k234567" \
  "$DATA/cifar10-k234567/ood/cifar10-unknown4.npz"
train_seeded fmnist-resnet14 resnet14 "$DATA/fashion-mnist" 10 1
# shellcheck disable=SC2086
cell fmnist-resnet14-seed1-grey resnet14 "$RUNS/fmnist-resnet14-seed1/resnet14.safetensors" "$DATA/fashion-mnist" $GREY
train_seeded cifar6-resnet14 resnet14 "$DATA/cifar10-6v4" 10 1
# shellcheck disable=SC2086
cell cifar6-resnet14-seed1-far resnet14 "$RUNS/cifar6-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-6v4" $FAR
cell cifar6-resnet14-seed1-near resnet14 "$RUNS/cifar6-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-6v4" \
  "$DATA/cifar10-6v4/ood/cifar10-unknown4.npz"
