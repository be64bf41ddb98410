#!/usr/bin/env bash
# The paper's protocol on ODIN's DenseNet-BC-100 (../shared/models/cifar10_densenet): no watermark vs the paper's
# CIFAR-10 presets for msp and energy, each detector in SCORES with and without the watermark.
# Usage: bash studies/run_densenet.sh [SHARED_DIR] [OUT] [extra bench options...]
# Default: the CPU schedule of the shared suite (2 epochs over a seeded 10,000-image subset) in bf16 (this model is
# ~2.5x faster in bf16 on AVX-512 BF16 / AMX machines; check lscpu: on AVX2-only machines pass --precision fp32).
# Re-running the same command resumes; pass --epochs 51 --train-limit 0 for the paper's schedule.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${1:-$ROOT/../shared}"
OUT="${2:-$ROOT/benchmarks/results/densenet/cpu-2ep-10k}"
shift $(( $# > 2 ? 2 : $# ))
PRESET="${PRESET:-cifar10}"
SCORES="${SCORES:-msp energy knn vim pnml dice react ash mahalanobis-pp}"
VENV="$(bash "$ROOT/scripts/env.sh")"
cmd=("$VENV/bin/watermark-ood" bench --model densenet_bc100
     --checkpoint "$SHARED/models/cifar10_densenet/densenet_bc100-6f65cb34.pt"
     --id-data "$SHARED/data/cifar10" --ood-data "$SHARED"/data/ood/*.npz
     --objective msp energy --preset "$PRESET" --epochs 2 --train-limit 10000 --seed 0
     --device cpu --precision bf16 --checkpoint-every 20 --scores $SCORES --no-progress --out "$OUT" "$@")
echo "+ ${cmd[*]}  # $(date -u +%FT%TZ) on $(lscpu | sed -n 's/^Model name: *//p')"
"${cmd[@]}"
