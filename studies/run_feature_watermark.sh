#!/usr/bin/env bash
# Issue 14 item 3: a watermark learned for the detectors that ship (objective `features`: squared hinge on the
# penultimate features' distance to ID class means), scored by those detectors with and without it.
# Same schedule as the detector leaderboard (2 epochs x 10k images, fp32, CPU). Usage: bash ... MODEL [SHARED_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="$1"; SHARED="${2:-$ROOT/../shared}"
VENV="$(bash "$ROOT/scripts/env.sh")"
ckpt=$(ls "$SHARED"/models/cifar10_resnet/${MODEL}-*.th)
set -x
"$VENV/bin/watermark-ood" bench --model "$MODEL" --checkpoint "$ckpt" --id-data "$SHARED/data/cifar10" \
  --ood-data "$SHARED"/data/ood/*.npz --objective features hinge --epochs 2 --train-limit 10000 --device cpu \
  --no-progress --scores pnml knn vim mahalanobis she energy knn+vim+energy \
  --out "$ROOT/benchmarks/results/feature-watermark/$MODEL"
