#!/usr/bin/env bash
# Issue 14 on a lent GPU, in one call of the device tool (about 9 minutes of its 15-minute lease):
#   python benchmarks/device/pack_shared.py pack ../shared .devdata        # here, once (~40 MiB)
#   run: bash studies/issue14_gpu.sh      carry: .devdata  (and .wrn-resume, see below)
# Stages in priority order (STAGES picks and orders them), each under what is left of BUDGET seconds, so a slow
# stage still returns what came before it. Every fit is the paper's full schedule (50 epochs over the whole
# training split) with test curves every 5 epochs (studies/full_schedule_curves.py): nothing is chosen by them.
#   r56    item 5: the squared-hinge objective on the shared ResNet-56 (the presets' GPU run is already committed);
#   wrn    item 5: WRN-40-2 trained by the Outlier-Exposure baseline recipe (benchmarks/train_classifier.py, 100
#          epochs, bf16); resumable: a run cut short returns its state as wrn40_2-oe.resume.part-* in $OUT (the
#          device returns files of at most 16 MiB); `cat` them into .wrn-resume/wrn40_2-oe.resume.safetensors
#          (a folder .git/info/exclude ignores) and carry .wrn-resume next time to continue;
#   wrn-presets  the paper's energy, then MSP preset on that WRN-40-2 (needs the finished weights);
#   r20    item 2: ResNet-20 variants the CPU queue has not finished (energy, msp, hinge-mixed).
# Dry run on CPU with a tiny suite: SHARED=/tmp/tiny DEVICE=cpu PRECISION=fp32 BUDGET=300 EPOCHS=1 WRN_EPOCHS=1 ...
set -u
OUT="${OUT:-/tmp/issue14-out}" WORK="${WORK:-/tmp/issue14}"
BUDGET="${BUDGET:-540}"
DEVICE="${DEVICE:-cuda}" PRECISION="${PRECISION:-bf16}"
STAGES="${STAGES:-r56 wrn wrn-presets r20}"
R20_VARIANTS="${R20_VARIANTS:-energy msp hinge-mixed}"
EPOCHS="${EPOCHS:-}" WRN_EPOCHS="${WRN_EPOCHS:-100}"   # EPOCHS: only for dry runs (the paper's 50 otherwise)
mkdir -p "$OUT" "$WORK/curves" "$WORK/runs"
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PY:-python3}"
exec > >(tee -a "$OUT/issue14_gpu.log") 2>&1
left() { echo $(( BUDGET - SECONDS )); }
stage() { echo; echo "=== [$SECONDS s] $*"; }

stage "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"

if [ -z "${SHARED:-}" ]; then
  stage "unpack the shared suite"
  SHARED=/tmp/shared
  "$PY" benchmarks/device/pack_shared.py unpack .devdata "$SHARED" || exit 1
fi
OOD=("$SHARED"/data/ood/*.npz)
WRN="$WORK/wrn40_2-oe.safetensors"

# curve NAME MODEL CHECKPOINT VARIANT: one full-schedule fit with its curve, cut off when the budget runs out.
curve() {
  local name=$1 model=$2 ckpt=$3 variant=$4 objective=${4%-mixed} extra=()
  [ "$variant" != "$objective" ] && extra+=(--set surrogate=mixed)
  [ -n "$EPOCHS" ] && extra+=(--set epochs="$EPOCHS")
  stage "$name: $model $variant, full schedule ($(left) s left)"
  [ "$(left)" -gt 60 ] || { echo "skipped: budget spent"; return 1; }
  timeout $(( $(left) - 20 )) "$PY" studies/full_schedule_curves.py --model "$model" --checkpoint "$ckpt" \
    --id-data "$SHARED/data/cifar10" --ood-data "${OOD[@]}" --objective "$objective" --device "$DEVICE" \
    --precision "$PRECISION" "${extra[@]}" --run-dir "$WORK/runs/$model-$variant" \
    --curve "$WORK/curves/$model-$variant.jsonl" 2>&1 | grep -v '^{"epoch"'
  [ "$(left)" -gt 60 ]
}

for s in $STAGES; do
  case $s in
    r56) curve r56 resnet56 "$(ls "$SHARED"/models/cifar10_resnet/resnet56-*.th)" hinge ;;
    wrn)
      stage "WRN-40-2 by the Outlier-Exposure baseline recipe ($(left) s left)"
      [ -f .wrn-resume/wrn40_2-oe.resume.safetensors ] && cp .wrn-resume/wrn40_2-oe.resume.safetensors "$WORK/"
      [ "$(left)" -gt 60 ] && timeout $(( $(left) - 20 )) "$PY" benchmarks/train_classifier.py --model wrn40_2 \
        --id-data "$SHARED/data/cifar10" --device "$DEVICE" --precision "$PRECISION" --epochs "$WRN_EPOCHS" \
        --out "$WRN" | tail -n 25 ;;
    wrn-presets)
      [ -f "$WRN" ] || { stage "wrn-presets skipped: no finished WRN-40-2 weights"; continue; }
      for objective in energy msp; do curve wrn-presets wrn40_2 "$WRN" "$objective" || break; done ;;
    r20)
      for variant in $R20_VARIANTS; do
        curve r20 resnet20 "$(ls "$SHARED"/models/cifar10_resnet/resnet20-*.th)" "$variant" || break
      done ;;
    *) echo "unknown stage $s" ;;
  esac
done
stage "pack what comes back (at most 8 files of 16 MiB)"
# curves and watermarks in one archive (the fits' checkpoints stay behind); the WRN weights and their record beside
# it; an unfinished WRN run's resume state in 15 MiB parts.
(cd "$WORK" && tar czf "$OUT/issue14.tgz" curves $(find runs -name watermark.safetensors) && tar tzf "$OUT/issue14.tgz")
[ -f "$WRN" ] && cp "$WRN" "${WRN%.safetensors}.json" "$OUT/"
[ ! -f "$WRN" ] && [ -f "$WORK/wrn40_2-oe.resume.safetensors" ] && \
  split -b 15M -d "$WORK/wrn40_2-oe.resume.safetensors" "$OUT/wrn40_2-oe.resume.part-"
stage "done"
ls -la "$OUT"
