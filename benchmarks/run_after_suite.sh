#!/usr/bin/env bash
# Session helper: waits for the preset suite, then runs the speed benchmark and the auto suite, one after another.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
while pgrep -f run_shared_suite.sh >/dev/null; do sleep 10; done
VENV="$(bash "$ROOT/scripts/env.sh")"
cd "$ROOT"
"$VENV/bin/python" benchmarks/speed.py --steps 10 --id-data ../shared/data/cifar10 \
  --ood-data ../shared/data/ood/tinyimagenet_resize.npz --checkpoint-dir ../shared/models/cifar10_resnet \
  --out benchmarks/results/speed-cpu.json > benchmarks/results/speed-cpu.log 2>&1
bash benchmarks/run_auto_suite.sh > benchmarks/results/auto-suite.log 2>&1
