#!/usr/bin/env bash
# Pause the background training, measure the cost of --score auto's default alone on the machine, resume.
set -u
cd /work/main
S=../shared
PY=$HOME/.cache/watermark-ood/venv/bin/python
TRAIN=$(pgrep -f train_classifier.py | head -1)
trap 'kill -CONT $TRAIN' EXIT
kill -STOP $TRAIN
date -u +%T
$PY benchmarks/detector_choice.py --cost-only --fit-reference --model resnet56 --checkpoint $S/models/cifar10_resnet/resnet56-4bfd9763.th --id-data $S/data/cifar10 --out $HOME/wood-runs/cost/resnet56-choice-cost-alone.json > $HOME/wood-runs/cost/resnet56-alone.log 2>&1
date -u +%T
/usr/bin/time -v $PY -m cProfile -o $HOME/wood-runs/cost/r20-auto.prof $HOME/.cache/watermark-ood/venv/bin/watermark-ood calibrate --model resnet20 --checkpoint $S/models/cifar10_resnet/resnet20-12fca82f.th --id-data $S/data/cifar10 --score auto --device cpu --no-progress --out $HOME/wood-runs/cost/r20-auto/detector.safetensors > $HOME/wood-runs/cost/r20-auto-rss.txt 2>&1
date -u +%T
