#!/usr/bin/env bash
# The shared CIFAR-10 suite (issue: real benchmark): ResNet-20 and ResNet-56 from ../shared/models, ID = the
# JPEG copy of CIFAR-10, OOD = every set in ../shared/data/ood, both objectives with the paper's CIFAR-10 presets.
# Usage: bash benchmarks/run_shared_suite.sh [SHARED_DIR] [OUT_ROOT] [extra bench options...]
# Default CPU schedule (fits a session): 2 epochs over a seeded 10,000-image subset (alpha 0.01, then 0.001).
# PRESET=auto runs the same suite with --preset auto (see run_auto_suite.sh).
set -euo pipefail
PRESET="${PRESET:-cifar10}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${1:-$ROOT/../shared}"
OUT="${2:-$ROOT/benchmarks/results/cpu-2ep-10k$([ "$PRESET" = auto ] && echo -auto)}"
shift $(( $# > 2 ? 2 : $# ))
VENV="$(bash "$ROOT/scripts/env.sh")"
for model in resnet20 resnet56; do
  ckpt=$(ls "$SHARED"/models/cifar10_resnet/${model}-*.th)
  cmd=("$VENV/bin/watermark-ood" bench --model "$model" --checkpoint "$ckpt"
       --id-data "$SHARED/data/cifar10" --ood-data "$SHARED"/data/ood/*.npz
       --objective msp energy --preset "$PRESET" --epochs 2 --train-limit 10000 --seed 0
       --device cpu --no-progress --out "$OUT/$model" "$@")
  echo "+ ${cmd[*]}"
  "${cmd[@]}"
done
