#!/usr/bin/env bash
# Every score with and without a watermark (issue: production), on the shared CIFAR-10 suite.
# Usage: bash benchmarks/run_scores_suite.sh MODEL WATERMARK OUT [SHARED_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODEL="$1"; WATERMARK="$2"; OUT="$3"; SHARED="${4:-$ROOT/../shared}"
VENV="$(bash "$ROOT/scripts/env.sh")"
ckpt=$(ls "$SHARED"/models/cifar10_resnet/${MODEL}-*.th)
cmd=("$VENV/bin/watermark-ood" evaluate --model "$MODEL" --checkpoint "$ckpt" --watermark "$WATERMARK"
     --id-data "$SHARED/data/cifar10" --ood-data "$SHARED"/data/ood/*.npz --seed 0 --device cpu --no-progress
     --scores msp energy maxlogit odin mahalanobis knn vim --out "$OUT")
echo "+ ${cmd[*]}"
"${cmd[@]}"
