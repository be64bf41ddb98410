# Sourced by the runners of detector_choice.py cells (run_scorecard.sh and the run_*_test.sh pool tests): where
# the data and models are, the shared OOD suites, `cell` (one resumable run per cell) and `train_seeded` (a retrain
# with another seed). The runner sets ROOT, OUT and CHOICE_ARGS (the arguments of its runs) first.
PY="${PY:-$HOME/.cache/watermark-ood/venv/bin/python}"
RUNS="${RUNS:-$HOME/wood-runs}"
SHARED="$ROOT/../shared"
mkdir -p "$OUT"
FAR="$SHARED/data/ood/fashion_mnist.npz $SHARED/data/ood/textures_partial.npz $SHARED/data/ood/tinyimagenet_resize.npz"
GREY="$RUNS/data/fashion-mnist-ood/cifar10-grey.npz $RUNS/data/fashion-mnist-ood/textures-grey.npz $RUNS/data/fashion-mnist-ood/tinyimagenet-grey.npz $RUNS/data/fashion-mnist-ood/digits.npz"
cell() {  # name model checkpoint id-data ood... (a cell whose JSON exists is skipped)
  local name=$1 model=$2 ckpt=$3 data=$4; shift 4
  [ -f "$OUT/$name.json" ] && { echo "$name: done"; return; }
  [ -f "$ckpt" ] || { echo "$name: $ckpt not there yet (train it: benchmarks/run_proving_ground_models.sh)"; return; }
  echo "$(date -u +%T) $name"
  "$PY" "$ROOT/benchmarks/detector_choice.py" --model "$model" --checkpoint "$ckpt" --id-data "$data" \
    --ood-data "$@" "${CHOICE_ARGS[@]}" --out "$OUT/$name.json.partial" > "$OUT/$name.log" 2>&1
  mv "$OUT/$name.json.partial" "$OUT/$name.json"
  echo "$(date -u +%T) $name: written"
}
train_seeded() {  # name model data epochs seed: a retrain with another seed (bf16: this CPU has AVX-512 BF16; on
  # AVX2 set PRECISION=fp32); weights in $RUNS/<name>-seed<seed>/, the record copied to results/models/
  local out="$RUNS/$1-seed$5/$2.safetensors"
  if [ ! -f "${out%.safetensors}.json" ]; then
    echo "$(date -u +%T) training $1 seed $5"
    "$PY" "$ROOT/benchmarks/train_classifier.py" --model "$2" --id-data "$3" --epochs "$4" --device cpu \
      --precision "${PRECISION:-bf16}" --seed "$5" --out "$out"
  fi
  cp "${out%.safetensors}.json" "$ROOT/benchmarks/results/models/$1-seed$5.json"
}
