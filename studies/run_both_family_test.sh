#!/usr/bin/env bash
# Issue 26: the fourth pre-registered pool test (benchmarks/README, 2026-12-03 afternoon): every detector but
# combood, ranked on both outlier families at once ("both-family object-destroying kinds": patch-shuffled and
# phase-scrambled outliers, low-frequency noise, flat colour), against the shipped default (shipped pool, shipped
# rule) run beside it in the same process (--pools shipped), on seed-2 retrains no earlier test has measured.
# Trains what is missing first (weights in ~/wood-runs, records in benchmarks/results/models/*-seed2.json); a cell
# whose JSON exists is skipped (resumable).
#   nice -n 10 bash studies/run_both_family_test.sh > ~/wood-runs/both-family.log 2>&1 &
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/both-family"
CHOICE_ARGS=(--candidates "all but combood" --rules "both-family object-destroying kinds" --pools shipped)
# shellcheck source=benchmarks/cells.sh
source "$ROOT/benchmarks/cells.sh"
DATA="$RUNS/data"
[ -f "$DATA/cifar10-6v4/train.npz" ] || "$PY" "$ROOT/benchmarks/prepare_proving_ground.py" --shared "$SHARED" --out "$DATA"
[ -f "$DATA/cifar10-k234567/train.npz" ] || "$PY" "$ROOT/benchmarks/prepare_proving_ground.py" --shared "$SHARED" \
  --out "$DATA" --classes 2 3 4 5 6 7
train_seeded cifar6b-resnet14 resnet14 "$DATA/cifar10-k234567" 10 2
cell cifar6b-resnet14-seed2-near resnet14 "$RUNS/cifar6b-resnet14-seed2/resnet14.safetensors" "$DATA/cifar10-k234567" \
  "$DATA/cifar10-k234567/ood/cifar10-unknown4.npz"
train_seeded fmnist-resnet14 resnet14 "$DATA/fashion-mnist" 10 2
# shellcheck disable=SC2086
cell fmnist-resnet14-seed2-grey resnet14 "$RUNS/fmnist-resnet14-seed2/resnet14.safetensors" "$DATA/fashion-mnist" $GREY
train_seeded cifar6-resnet14 resnet14 "$DATA/cifar10-6v4" 10 2
# shellcheck disable=SC2086
cell cifar6-resnet14-seed2-far resnet14 "$RUNS/cifar6-resnet14-seed2/resnet14.safetensors" "$DATA/cifar10-6v4" $FAR
cell cifar6-resnet14-seed2-near resnet14 "$RUNS/cifar6-resnet14-seed2/resnet14.safetensors" "$DATA/cifar10-6v4" \
  "$DATA/cifar10-6v4/ood/cifar10-unknown4.npz"
train_seeded cifar10-wrn16_4 wrn16_4 "$SHARED/data/cifar10" 4 2
# shellcheck disable=SC2086
cell cifar10-wrn16_4-seed2-far wrn16_4 "$RUNS/cifar10-wrn16_4-seed2/wrn16_4.safetensors" "$SHARED/data/cifar10" $FAR
