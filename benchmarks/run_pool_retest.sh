#!/usr/bin/env bash
# Issue 26: the second pre-registered pool test (benchmarks/README, 2026-12-03, "shipped + multimahalanobis" vs the
# shipped pool, decided by pool_report.py --rule relative) on cells none of the earlier tests measured: the
# 4-epoch WRN-16-4 and new seeds (seed 1) of the three ResNet-14 classifiers. Trains what is missing first (weights in
# ~/wood-runs, records in benchmarks/results/models/*-seed1.json); a cell whose JSON exists is skipped (resumable).
#   nice -n 10 bash benchmarks/run_pool_retest.sh > ~/wood-runs/pools-retest.log 2>&1 &
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/pools-retest"
CHOICE_ARGS=(--candidates shipped --pools "shipped + multimahalanobis" --rules "object-destroying kinds")
# shellcheck source=benchmarks/cells.sh
source "$ROOT/benchmarks/cells.sh"
DATA="$RUNS/data"
train_seed1() {  # name model data epochs: bf16 autocast (this CPU has AVX-512 BF16; on AVX2 use fp32)
  local out="$RUNS/$1-seed1/$2.safetensors"
  if [ ! -f "${out%.safetensors}.json" ]; then
    echo "$(date -u +%T) training $1 seed 1"
    "$PY" "$ROOT/benchmarks/train_classifier.py" --model "$2" --id-data "$3" --epochs "$4" --device cpu \
      --precision "${PRECISION:-bf16}" --seed 1 --out "$out"
  fi
  cp "${out%.safetensors}.json" "$ROOT/benchmarks/results/models/$1-seed1.json"
}
# shellcheck disable=SC2086
cell cifar10-wrn16_4-far wrn16_4 "$RUNS/cifar10-wrn16_4/wrn16_4.safetensors" "$SHARED/data/cifar10" $FAR
train_seed1 cifar6b-resnet14 resnet14 "$DATA/cifar10-k234567" 10
cell cifar6b-resnet14-seed1-near resnet14 "$RUNS/cifar6b-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-k234567" \
  "$DATA/cifar10-k234567/ood/cifar10-unknown4.npz"
train_seed1 fmnist-resnet14 resnet14 "$DATA/fashion-mnist" 10
# shellcheck disable=SC2086
cell fmnist-resnet14-seed1-grey resnet14 "$RUNS/fmnist-resnet14-seed1/resnet14.safetensors" "$DATA/fashion-mnist" $GREY
train_seed1 cifar6-resnet14 resnet14 "$DATA/cifar10-6v4" 10
# shellcheck disable=SC2086
cell cifar6-resnet14-seed1-far resnet14 "$RUNS/cifar6-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-6v4" $FAR
cell cifar6-resnet14-seed1-near resnet14 "$RUNS/cifar6-resnet14-seed1/resnet14.safetensors" "$DATA/cifar10-6v4" \
  "$DATA/cifar10-6v4/ood/cifar10-unknown4.npz"
