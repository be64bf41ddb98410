#!/usr/bin/env bash
# Issue 14: the paper's full 50-epoch schedule on ResNet-20 on CPU, one variant after another, with test
# curves every 5 epochs. Resumable: run it again and each fit continues from its checkpoint in $RUNS.
# A variant is an objective (hinge, energy, msp), optionally with "-mixed" (surrogates: half Gaussian, a quarter
# flat colours, a quarter greyscale ID images).
# fp32: on CPUs without native bf16 (no avx512_bf16, e.g. this AVX2 machine) bf16 is ~40x slower.
# Usage: nice -n 19 bash studies/run_full_schedule_cpu.sh  [> ~/wood-runs/queue.log 2>&1 &]
# MODEL=resnet8 CKPT=FILE picks another model (default: the shared ResNet-20); run dirs and curves carry its name.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-$HOME/.cache/watermark-ood/venv/bin/python}"
SHARED="${SHARED:-../shared}"
RUNS="${RUNS:-$HOME/wood-runs}"
OUT=benchmarks/results/full-schedule-cpu
MODEL="${MODEL:-resnet20}"
CKPT="${CKPT:-$SHARED/models/cifar10_resnet/resnet20-12fca82f.th}"
for variant in ${VARIANTS:-${OBJECTIVES:-hinge energy msp hinge-mixed}}; do
  objective="${variant%-mixed}"
  extra=()
  [ "$variant" != "$objective" ] && extra=(--set surrogate=mixed)
  "$PY" studies/full_schedule_curves.py --model "$MODEL" --checkpoint "$CKPT" --id-data "$SHARED/data/cifar10" \
    --ood-data "$SHARED"/data/ood/*.npz --objective "$objective" --precision fp32 "${extra[@]}" \
    --run-dir "$RUNS/$MODEL-$variant" --curve "$OUT/$MODEL-$variant.jsonl" || exit $?
done
