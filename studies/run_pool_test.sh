#!/usr/bin/env bash
# Issue 26: the pre-registered test of --score auto's candidate pools (benchmarks/README, 2026-12-03) on the
# proving ground's retrained cells (benchmarks/run_proving_ground_models.sh; the two shared models are where the
# pools were thought of, so they are not among them). One detector_choice.py run per cell: the shipped pool's
# choice, and the choice of each other pool, all measured on the cell's real OOD sets after the choices.
# Resumable: a cell whose JSON exists is skipped.
#   nice -n 10 bash studies/run_pool_test.sh > ~/wood-runs/pools.log 2>&1 &
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/pools"
CHOICE_ARGS=(--candidates shipped --pools all "all but combood" "shipped + multimahalanobis" --rules "object-destroying kinds")
# shellcheck source=benchmarks/cells.sh
source "$ROOT/benchmarks/cells.sh"
# shellcheck disable=SC2086
cell cifar6-resnet14-far resnet14 "$RUNS/cifar6-resnet14/resnet14.safetensors" "$RUNS/data/cifar10-6v4" $FAR
# shellcheck disable=SC2086
cell fmnist-resnet14-grey resnet14 "$RUNS/fmnist-resnet14/resnet14.safetensors" "$RUNS/data/fashion-mnist" $GREY
cell cifar6b-resnet14-near resnet14 "$RUNS/cifar6b-resnet14/resnet14.safetensors" "$RUNS/data/cifar10-k234567" \
  "$RUNS/data/cifar10-k234567/ood/cifar10-unknown4.npz"
# shellcheck disable=SC2086
cell cifar10-wrn16_4-far wrn16_4 "$RUNS/cifar10-wrn16_4/wrn16_4.safetensors" "$SHARED/data/cifar10" $FAR
cell cifar6-resnet14-near resnet14 "$RUNS/cifar6-resnet14/resnet14.safetensors" "$RUNS/data/cifar10-6v4" \
  "$RUNS/data/cifar10-6v4/ood/cifar10-unknown4.npz"
