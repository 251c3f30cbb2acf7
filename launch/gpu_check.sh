#!/usr/bin/env bash
# GPU check: PA-ResSeg train-step throughput (float32 and bfloat16, at the paper's batch 8 and at a
# batch that fills the GPU) and whole-volume inference, with achieved TFLOP/s and the fraction of
# the card's peak. Installs nothing; uses the Python environment it is started in.
#
#   bash launch/gpu_check.sh                 # writes gpu_check/*.json beside the printed tables
#   BIG_BATCH=128 PEAK_TFLOPS=989 OUT=/tmp/gc bash launch/gpu_check.sh
#
# PEAK_TFLOPS defaults to the card's dense bfloat16 tensor-core peak (H100/H200 SXM: 989); the
# float32 rows are compared with the same number, so their fraction is a lower bound.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-gpu_check}
BIG_BATCH=${BIG_BATCH:-128}
REPEATS=${REPEATS:-5}
mkdir -p "$OUT"

if ! "$PYTHON" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)"; then
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
  "$PYTHON" launch/benchmark.py --parts=train --dtypes=float32,bfloat16 --batch="$batch" --size=224 \
    --repeats="$REPEATS" --warmup=2 "${peak[@]}" --json="$OUT/train_b$batch.json"
done
echo "== inference, 60 x 512 x 512 volume"
"$PYTHON" launch/benchmark.py --parts=infer --slices=60 --slice_size=512 --infer_batch=16 \
  --repeats=3 --warmup=1 "${peak[@]}" --json="$OUT/infer.json"
echo "results: $OUT/"
