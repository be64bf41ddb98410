#!/usr/bin/env bash
# Pause the running cell, time --score auto's default pool against one watermark fit alone (final code), resume.
set -u
cd /work/main
S=../shared
PY=$HOME/.cache/watermark-ood/venv/bin/python
CELL=$(pgrep -f pre26/benchmarks/detector_choice.py | head -1)
trap 'kill -CONT $CELL' EXIT
kill -STOP $CELL
date -u +%T
$PY benchmarks/detector_choice.py --cost-only --fit-reference --model resnet56 --checkpoint $S/models/cifar10_resnet/resnet56-4bfd9763.th --id-data $S/data/cifar10 --out $HOME/wood-runs/cost/resnet56-choice-cost-final.json > $HOME/wood-runs/cost/resnet56-final.log 2>&1
date -u +%T
