#!/usr/bin/env bash
# GPU check: PA-ResSeg train-step throughput (bfloat16 and float32, at a batch that fills the GPU and
# at the paper's batch 8), whole-volume inference, and the input pipeline on this machine's CPUs,
# with achieved TFLOP/s and the fraction of the card's peak. Installs nothing; uses the Python
# environment it is started in. The headline (large-batch) run comes first; a failed run (out of
# memory, say) is reported and the others still run; the exit status is 1 if any failed. The
# large-batch run also prints where each step's GPU time goes, by operation (--profile_calls).
#
#   bash launch/gpu_check.sh                 # writes gpu_check/*.json beside the printed tables
#   BIG_BATCH=128 PEAK_TFLOPS=989 COMPARE_TORCH=1 OUT=/tmp/gc bash launch/gpu_check.sh
#   ALLOW_CPU=1 WIDTH=4 SIZE=32 BIG_BATCH=4 SLICES=2 INFER_BATCH=2 SLICE_SIZE=64 bash launch/gpu_check.sh  # smoke test
#   RUNS=big_bf16 bash launch/gpu_check.sh   # only the headline run and its op-time breakdown (short device time)
#   RUNS=precision bash launch/gpu_check.sh  # attention matmuls at Precision.HIGHEST vs the default (TF32)
#   RUNS=parallel bash launch/gpu_check.sh   # the training step under pmap and under jit sharding
#
# PEAK_TFLOPS defaults to the card's dense bfloat16 tensor-core peak (H100/H200 SXM: 989); the
# float32 rows are compared with the same number, so their fraction is a lower bound.
# COMPARE_TORCH=1 also runs the PyTorch oracle (on the GPU, float32) at batch 8 and for inference.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-gpu_check}
BIG_BATCH=${BIG_BATCH:-}  # default: 96 on a card with >= 100 GB (H200), else 64 (H100 80 GB)
REPEATS=${REPEATS:-5}
WIDTH=${WIDTH:-64}
SIZE=${SIZE:-224}
SLICES=${SLICES:-60}
SLICE_SIZE=${SLICE_SIZE:-512}
INFER_BATCH=${INFER_BATCH:-20}  # must divide SLICES
PIPELINE_WORKERS=${PIPELINE_WORKERS:-0,4,8}
PROFILE_CALLS=${PROFILE_CALLS:-3}  # traced large-batch steps for the op-time breakdown (0: none)
ALL_RUNS=big_bf16,big_f32,batch8,infer,precision,parallel
RUNS=${RUNS:-$ALL_RUNS}  # which runs (always in the order of ALL_RUNS)
listed() { [[ ",$2," == *",$1,"* ]]; }  # listed NAME LIST: NAME is an item of the comma-separated LIST
for run in ${RUNS//,/ }; do
  listed "$run" "$ALL_RUNS" || { echo "gpu_check: RUNS: unknown run '$run'; choose among $ALL_RUNS" >&2; exit 2; }
done
mkdir -p "$OUT"

if [[ "${ALLOW_CPU:-0}" != 1 ]] && ! "$PYTHON" -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)"; then
  echo "gpu_check: jax sees no GPU (backend: $("$PYTHON" -c 'import jax; print(jax.default_backend())'))" >&2
  exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [[ -z "$BIG_BATCH" ]]; then  # float32 needs ~0.85 GB per 224 px sample (XLA's memory analysis)
  mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1 || true)
  BIG_BATCH=$([[ "${mib:-0}" -ge 100000 ]] && echo 96 || echo 64)
fi
if [[ -z "${PEAK_TFLOPS:-}" ]]; then
  case "$("$PYTHON" -c 'import jax; print(jax.devices()[0].device_kind)')" in
    *H100*|*H200*|*H800*) PEAK_TFLOPS=989 ;;
    *A100*) PEAK_TFLOPS=312 ;;
    *) PEAK_TFLOPS=0 ;;
  esac
fi
common=(--width="$WIDTH" --repeats="$REPEATS")
[[ "$PEAK_TFLOPS" != 0 ]] && common+=(--peak_tflops="$PEAK_TFLOPS")
torch=()
if [[ "${COMPARE_TORCH:-0}" == 1 ]]; then
  torch=(--compare_torch)
  export PYTHONPATH="$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"  # the oracle, tests/torch_reference
  # Both frameworks then share the card: JAX takes memory as it needs it instead of most of it up front.
  export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}  # room for the large batch

failed=0
bench() {  # bench RUN TITLE ARGS...: one benchmark process if RUN is in RUNS; a failure is counted, not fatal
  listed "$1" "$RUNS" || return 0
  echo "== $2"
  shift 2
  "$PYTHON" launch/benchmark.py "${common[@]}" "$@" || { echo "gpu_check: FAILED: $*" >&2; failed=1; }
}
# One process per dtype at the large batch: float32 running out of memory must not cost the bfloat16 row.
bench big_bf16 "train step (bfloat16) and input pipeline, batch $BIG_BATCH" --parts=train,pipeline --dtypes=bfloat16 \
  --batch="$BIG_BATCH" --size="$SIZE" --warmup=2 --pipeline_workers="$PIPELINE_WORKERS" --profile_calls="$PROFILE_CALLS" \
  --json="$OUT/train_b${BIG_BATCH}_bfloat16.json"
bench big_f32 "train step (float32), batch $BIG_BATCH" --parts=train --dtypes=float32 --batch="$BIG_BATCH" --size="$SIZE" \
  --warmup=2 --json="$OUT/train_b${BIG_BATCH}_float32.json"
bench batch8 "train step, batch 8" --parts=train --dtypes=bfloat16,float32 --batch=8 --size="$SIZE" --warmup=2 \
  "${torch[@]}" --json="$OUT/train_b8.json"
bench infer "inference, $SLICES x $SLICE_SIZE x $SLICE_SIZE volume" --parts=infer --slices="$SLICES" \
  --slice_size="$SLICE_SIZE" --infer_batch="$INFER_BATCH" --warmup=1 "${torch[@]}" --json="$OUT/infer.json"
# The model's default (precise_attention) against XLA's default precision, which is TF32 on this card: how much
# the float32 logits and gradient move, and seconds per call of each, at the paper's batch.
if listed precision "$RUNS"; then
  echo "== attention matmuls: Precision.HIGHEST vs default (TF32), float32, batch 8"
  "$PYTHON" launch/benchmark.py precision --width="$WIDTH" --size="$SIZE" --batch=8 --repeats="$REPEATS" \
    --json="$OUT/precision.json" || { echo "gpu_check: FAILED: precision" >&2; failed=1; }
fi
# config.train.parallel: pmap against jit sharding, the training loop's own step on every device of this host.
if listed parallel "$RUNS"; then
  echo "== training step: pmap vs jit sharding, batch 8"
  "$PYTHON" launch/benchmark.py parallel --width="$WIDTH" --size="$SIZE" --batch=8 --repeats="$REPEATS" \
    --json="$OUT/parallel.json" || { echo "gpu_check: FAILED: parallel" >&2; failed=1; }
fi
echo "results: $OUT/"
exit "$failed"
