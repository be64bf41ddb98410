#!/usr/bin/env bash
# Session 2026-12-03: retrain the proving ground's ResNet-14 cells (and the 4-epoch WRN-16-4) for issue 26's
# pre-registered pool rule; records copied to ~/wood-runs/records.
set -euo pipefail
ROOT=/work/main
PY=$HOME/.cache/watermark-ood/venv/bin/python
RUNS=$HOME/wood-runs
DATA=$RUNS/data
[ -f "$DATA/cifar10-6v4/train.npz" ] || "$PY" "$ROOT/benchmarks/prepare_proving_ground.py" --shared "$ROOT/../shared" --out "$DATA"
[ -f "$DATA/cifar10-k234567/train.npz" ] || "$PY" "$ROOT/benchmarks/prepare_proving_ground.py" --shared "$ROOT/../shared" --out "$DATA" --classes 2 3 4 5 6 7
train() {  # name model data epochs
  local out="$RUNS/$1/$2.safetensors"
  if [ ! -f "${out%.safetensors}.json" ]; then
    echo "$(date -u +%T) training $1"
    "$PY" "$ROOT/benchmarks/train_classifier.py" --model "$2" --id-data "$3" --epochs "$4" --device cpu \
      --precision bf16 --out "$out"
  fi
  cp "${out%.safetensors}.json" "$RUNS/records/$1.json"
  echo "$(date -u +%T) $1 done"
}
train fmnist-resnet14 resnet14 "$DATA/fashion-mnist" 10
train cifar6-resnet14 resnet14 "$DATA/cifar10-6v4" 10
train cifar6b-resnet14 resnet14 "$DATA/cifar10-k234567" 10
train cifar10-wrn16_4 wrn16_4 "$ROOT/../shared/data/cifar10" 4
