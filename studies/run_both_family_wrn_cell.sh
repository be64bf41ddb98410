#!/usr/bin/env bash
# Issue 26, fourth pool test: its fifth cell (cifar10-wrn16_4-seed2-far), with the code the test was pre-registered
# with (commit 0b7a2c3, before --score auto's default changed: its `shipped` pool and rule are the old default that
# the challenger is compared with). Trains the seed-2 WRN-16-4 first if missing; resumable.
#   nice -n 10 bash studies/run_both_family_wrn_cell.sh > ~/wood-runs/wrn-cell.log 2>&1 &
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/benchmarks/results/both-family"
# --measure picks (2026-12-05): only the two picks and energy are measured on the real sets, what the rule decides
# on; measuring every candidate (gradient detectors on 16,000 images of a WRN) did not fit a session after the
# training. MEASURE=all measures every candidate as the other four cells did.
CHOICE_ARGS=(--candidates "all but combood" --rules "both-family object-destroying kinds" --pools shipped
             --measure "${MEASURE:-picks}")
# shellcheck source=benchmarks/cells.sh
source "$ROOT/benchmarks/cells.sh"
train_seeded cifar10-wrn16_4 wrn16_4 "$SHARED/data/cifar10" 4 2
CODE="$RUNS/pre26"
[ -d "$CODE" ] || git -C "$ROOT" worktree add --detach "$CODE" 0b7a2c3
# the selection is 0b7a2c3's (its library code and pools); the benchmark script is this checkout's, which differs
# from 0b7a2c3's only by --measure (git diff 0b7a2c3 -- benchmarks/detector_choice.py)
cp "$ROOT/benchmarks/detector_choice.py" "$CODE/benchmarks/detector_choice.py"
export PYTHONPATH="$CODE/src"
ROOT="$CODE"  # `cell` runs this commit's detector_choice.py
# shellcheck disable=SC2086
cell cifar10-wrn16_4-seed2-far wrn16_4 "$RUNS/cifar10-wrn16_4-seed2/wrn16_4.safetensors" "$SHARED/data/cifar10" $FAR
