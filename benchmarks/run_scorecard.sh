#!/usr/bin/env bash
# Issue 27: the scorecard's cells, one `detector_choice.py` run each (the choice reads ID training data only; the
# OOD sets are read afterwards, to measure it). Resumable: a cell whose JSON exists is skipped.
#   nice -n 19 bash benchmarks/run_scorecard.sh > ~/wood-runs/scorecard.log 2>&1 &
# then: python benchmarks/scorecard.py (table + plot from the JSONs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$HOME/.cache/watermark-ood/venv/bin/python}"
RUNS="${RUNS:-$HOME/wood-runs}"
SHARED="$ROOT/../shared"
OUT="$ROOT/benchmarks/results/scorecard"
mkdir -p "$OUT"
FAR="$SHARED/data/ood/fashion_mnist.npz $SHARED/data/ood/textures_partial.npz $SHARED/data/ood/tinyimagenet_resize.npz"
GREY="$RUNS/data/fashion-mnist-ood/cifar10-grey.npz $RUNS/data/fashion-mnist-ood/textures-grey.npz $RUNS/data/fashion-mnist-ood/tinyimagenet-grey.npz $RUNS/data/fashion-mnist-ood/digits.npz"
cell() {  # name model checkpoint id-data ood...
  local name=$1 model=$2 ckpt=$3 data=$4; shift 4
  [ -f "$OUT/$name.json" ] && { echo "$name: done"; return; }
  [ -f "$ckpt" ] || { echo "$name: $ckpt not there yet (train it: benchmarks/run_proving_ground_models.sh)"; return; }
  "$PY" "$ROOT/benchmarks/detector_choice.py" --model "$model" --checkpoint "$ckpt" --id-data "$data" \
    --ood-data "$@" --out "$OUT/$name.json.partial" > "$OUT/$name.log" 2>&1
  mv "$OUT/$name.json.partial" "$OUT/$name.json"
  echo "$name: written"
}
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
