#!/usr/bin/env bash
# GPU check: PA-ResSeg train-step throughput (float32 and bfloat16, at the paper's batch 8 and at a
# batch that fills the GPU) and whole-volume inference, with achieved TFLOP/s and the fraction of
# the card's peak. Installs nothing; uses the Python environment it is started in.
#
#   bash launch/gpu_check.sh                 # writes gpu_check/*.json beside the printed tables
#   BIG_BATCH=128 PEAK_TFLOPS=989 OUT=/tmp/gc bash launch/gpu_check.sh
#   ALLOW_CPU=1 WIDTH=4 SIZE=32 BIG_BATCH=4 SLICES=2 INFER_BATCH=2 SLICE_SIZE=64 bash launch/gpu_check.sh  # smoke test
#
# PEAK_TFLOPS defaults to the card's dense bfloat16 tensor-core peak (H100/H200 SXM: 989); the
# float32 rows are compared with the same number, so their fraction is a lower bound.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-gpu_check}
BIG_BATCH=${BIG_BATCH:-128}
REPEATS=${REPEATS:-5}
WIDTH=${WIDTH:-64}
SIZE=${SIZE:-224}
SLICES=${SLICES:-60}
SLICE_SIZE=${SLICE_SIZE:-512}
INFER_BATCH=${INFER_BATCH:-20}  # must divide SLICES
mkdir -p "$OUT"

if [[ "${ALLOW_CPU:-0}" != 1 ]] && ! "$PYTHON" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)"; then
  echo "gpu_check: jax sees no GPU (backend: $("$PYTHON" -c 'import jax; print(jax.default_backend())'))" >&2
  exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [[ -z "${PEAK_TFLOPS:-}" ]]; then
  case "$("$PYTHON" -c 'import jax; print(jax.devices()[0].device_kind)')" in
    *H100*|*H200*|*H800*) PEAK_TFLOPS=989 ;;
    *A100*) PEAK_TFLOPS=312 ;;
    *) PEAK_TFLOPS=0 ;;
  esac
fi
peak=()
[[ "$PEAK_TFLOPS" != 0 ]] && peak=(--peak_tflops="$PEAK_TFLOPS")

for batch in 8 "$BIG_BATCH"; do
  echo "== train step, batch $batch"
  "$PYTHON" launch/benchmark.py --parts=train --dtypes=float32,bfloat16 --width="$WIDTH" --batch="$batch" --size="$SIZE" \
    --repeats="$REPEATS" --warmup=2 "${peak[@]}" --json="$OUT/train_b$batch.json"
done
echo "== inference, $SLICES x $SLICE_SIZE x $SLICE_SIZE volume"
"$PYTHON" launch/benchmark.py --parts=infer --width="$WIDTH" --slices="$SLICES" --slice_size="$SLICE_SIZE" --infer_batch="$INFER_BATCH" \
  --repeats=3 --warmup=1 "${peak[@]}" --json="$OUT/infer.json"
echo "results: $OUT/"
