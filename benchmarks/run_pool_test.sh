#!/usr/bin/env bash
# Issue 26: the pre-registered test of --score auto's candidate pools (benchmarks/README, 2026-12-03) on the
# proving ground's retrained cells (benchmarks/run_proving_ground_models.sh; the two shared models are where the
# pools were thought of, so they are not among them). One detector_choice.py run per cell: the shipped pool's
# choice, and the choice of each other pool, all measured on the cell's real OOD sets after the choices.
# Resumable: a cell whose JSON exists is skipped.
#   nice -n 10 bash benchmarks/run_pool_test.sh > ~/wood-runs/pools.log 2>&1 &
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$HOME/.cache/watermark-ood/venv/bin/python}"
RUNS="${RUNS:-$HOME/wood-runs}"
SHARED="$ROOT/../shared"
OUT="$ROOT/benchmarks/results/pools"
mkdir -p "$OUT"
FAR="$SHARED/data/ood/fashion_mnist.npz $SHARED/data/ood/textures_partial.npz $SHARED/data/ood/tinyimagenet_resize.npz"
GREY="$RUNS/data/fashion-mnist-ood/cifar10-grey.npz $RUNS/data/fashion-mnist-ood/textures-grey.npz $RUNS/data/fashion-mnist-ood/tinyimagenet-grey.npz $RUNS/data/fashion-mnist-ood/digits.npz"
cell() {  # name model checkpoint id-data ood...
  local name=$1 model=$2 ckpt=$3 data=$4; shift 4
  [ -f "$OUT/$name.json" ] && { echo "$name: done"; return; }
  [ -f "$ckpt" ] || { echo "$name: $ckpt not there (train it: benchmarks/run_proving_ground_models.sh)"; return; }
  echo "$(date -u +%T) $name"
  "$PY" "$ROOT/benchmarks/detector_choice.py" --model "$model" --checkpoint "$ckpt" --id-data "$data" \
    --ood-data "$@" --candidates shipped --pools all "all but combood" "shipped + multimahalanobis" \
    --rules "object-destroying kinds" --out "$OUT/$name.json.partial" > "$OUT/$name.log" 2>&1
  mv "$OUT/$name.json.partial" "$OUT/$name.json"
  echo "$(date -u +%T) $name: written"
}
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
