#!/usr/bin/env bash
# Issue 27: train the proving ground's three classifiers on this CPU, in the background, resumable.
#   nice -n 19 bash benchmarks/run_proving_ground_models.sh > ~/wood-runs/proving-ground.log 2>&1 &
# Each training saves its resume state after every epoch (re-run the script to continue); the weights stay in
# ~/wood-runs, the records (command, sha256, test accuracy) are copied to benchmarks/results/models/.
# bf16 autocast: this CPU has AVX-512 BF16/AMX (check lscpu; on an AVX2-only CPU use fp32, bf16 is emulated there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$HOME/.cache/watermark-ood/venv/bin/python}"
RUNS="${RUNS:-$HOME/wood-runs}"
DATA="$RUNS/data"
PRECISION="${PRECISION:-bf16}"
[ -f "$DATA/cifar10-6v4/train.npz" ] || "$PY" "$ROOT/benchmarks/prepare_proving_ground.py" --shared "$ROOT/../shared" --out "$DATA"
train() {  # name model data epochs
  local out="$RUNS/$1/$2.safetensors"
  if [ ! -f "${out%.safetensors}.json" ]; then
    "$PY" "$ROOT/benchmarks/train_classifier.py" --model "$2" --id-data "$3" --epochs "$4" --device cpu \
      --precision "$PRECISION" --out "$out"
  fi
  cp "${out%.safetensors}.json" "$ROOT/benchmarks/results/models/$1.json"
}
train fmnist-resnet14 resnet14 "$DATA/fashion-mnist" 10
train cifar6-resnet14 resnet14 "$DATA/cifar10-6v4" 10
[ -f "$DATA/cifar10-k234567/train.npz" ] || "$PY" "$ROOT/benchmarks/prepare_proving_ground.py" --shared "$ROOT/../shared" --out "$DATA" --classes 2 3 4 5 6 7
train cifar6b-resnet14 resnet14 "$DATA/cifar10-k234567" 10  # the second near split (issue 27 item 5's deciding cell)
train cifar10-wrn16_4 wrn16_4 "$ROOT/../shared/data/cifar10" 15
