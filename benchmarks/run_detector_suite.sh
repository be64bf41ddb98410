#!/usr/bin/env bash
# Issue 13 on the shared suite, for one model: the leaderboard of every detector with and without a watermark
# (bench --scores all; the paper's energy preset, 2 epochs x 10k images), the ID-only choice measured on real OOD
# data, and every exported detector checked in onnxruntime. CPU, fp32. About 15 min (ResNet-20) / 45 min (ResNet-56).
# Usage: bash benchmarks/run_detector_suite.sh MODEL [SHARED_DIR]
# CKPT=FILE picks a checkpoint outside ../shared (a model trained by train_classifier.py, e.g. resnet8);
# NAME=... names its results (default: MODEL), e.g. resnet8-seed1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="$1"; SHARED="${2:-$ROOT/../shared}"
VENV="$(bash "$ROOT/scripts/env.sh")"
ckpt="${CKPT:-$(ls "$SHARED"/models/cifar10_resnet/${MODEL}-*.th)}"
OUT="$ROOT/benchmarks/results/detectors"
NAME="${NAME:-$MODEL}"
mkdir -p "$OUT"
set -x
"$VENV/bin/watermark-ood" bench --model "$MODEL" --checkpoint "$ckpt" --id-data "$SHARED/data/cifar10" \
  --ood-data "$SHARED"/data/ood/*.npz --objective energy --epochs 2 --train-limit 10000 --device cpu \
  --no-progress --scores all knn+vim+energy --out "$OUT/$NAME-bench"
"$VENV/bin/python" "$ROOT/benchmarks/detector_choice.py" --model "$MODEL" --checkpoint "$ckpt" \
  --id-data "$SHARED/data/cifar10" --ood-data "$SHARED"/data/ood/*.npz --fit-reference \
  --watermark "$OUT/$NAME-bench/watermark-energy.safetensors" --out "$OUT/$NAME-choice.json"
"$VENV/bin/python" "$ROOT/benchmarks/export_check.py" --model "$MODEL" --checkpoint "$ckpt" \
  --id-data "$SHARED/data/cifar10" --ood-data "$SHARED"/data/ood/*.npz --out "$OUT/$NAME-export.json"
