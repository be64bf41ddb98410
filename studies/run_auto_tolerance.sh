#!/usr/bin/env bash
# Issue 14's pre-registered test of --auto-tolerance (benchmarks/README, "a noise-aware admission rule"): each
# model under --preset auto with the exact rule (0) and with one standard error (1), 2 epochs x 10k, CPU.
# Usage: bash studies/run_auto_tolerance.sh SHARED_DIR NAME:ARCH:CHECKPOINT... (TOLERANCES="0 1" by default)
# Writes benchmarks/results/auto-tolerance/NAME-tTOL/ (results.json, report.md, watermarks).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="$1"; shift
VENV="$(bash "$ROOT/scripts/env.sh")"
for spec in "$@"; do
  IFS=: read -r name arch ckpt <<< "$spec"
  for tol in ${TOLERANCES:-0 1}; do
    cmd=("$VENV/bin/watermark-ood" bench --model "$arch" --checkpoint "$ckpt"
         --id-data "$SHARED/data/cifar10" --ood-data "$SHARED"/data/ood/*.npz
         --objective msp energy --preset auto --auto-tolerance "$tol" --epochs 2 --train-limit 10000 --seed 0
         --device cpu --no-progress --out "$ROOT/benchmarks/results/auto-tolerance/$name-t$tol")
    echo "+ ${cmd[*]}"
    "${cmd[@]}"
  done
done
