#!/usr/bin/env bash
# Issue 14: the paper's full 50-epoch schedule on ResNet-20 on CPU, one objective after another, with test
# curves every 5 epochs. Resumable: run it again and each fit continues from its checkpoint in $RUNS.
# fp32: on CPUs without native bf16 (no avx512_bf16, e.g. this AVX2 machine) bf16 is ~40x slower.
# Usage: nice -n 19 bash benchmarks/run_full_schedule_cpu.sh  [> ~/wood-runs/queue.log 2>&1 &]
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-$HOME/.cache/watermark-ood/venv/bin/python}"
SHARED="${SHARED:-../shared}"
RUNS="${RUNS:-$HOME/wood-runs}"
OUT=benchmarks/results/full-schedule-cpu
for objective in ${OBJECTIVES:-hinge energy msp}; do
  "$PY" benchmarks/full_schedule_curves.py --model resnet20 \
    --checkpoint "$SHARED/models/cifar10_resnet/resnet20-12fca82f.th" --id-data "$SHARED/data/cifar10" \
    --ood-data "$SHARED"/data/ood/*.npz --objective "$objective" --precision fp32 \
    --run-dir "$RUNS/resnet20-$objective" --curve "$OUT/resnet20-$objective.jsonl" || exit $?
done
