#!/usr/bin/env bash
# One lent GPU, used in order of value: every step runs under its own time cap, a failing step is
# logged and the next one still runs, and a summary table ends the log.
#
#   1. the CUDA tests: tests/test_cuda.py and the kill -9 resume test on the GPU
#   2. throughput: python -m benchmarks.gpu (resnet50 224 px fp32 / bf16+channels_last / fp16,
#      resnet20 with GPU-resident data) and torch.compile
#   3. time to accuracy: the speedrun-94 recipe on the GPU, seeds as time allows
#   4. the image-folder loader feeding the GPU: img/s from a JPEG folder with the machine's cores
#   5. inference: exported resnet50, batch 1 latency and batch 256 throughput
#
# On the GPU machine (the device tool; Fashion-MNIST carried in .gpu-data, see docs/scaling.md):
#   bash benchmarks/gpu_session.sh --data-dir .gpu-data --out "$OUT"
# Its CPU smoke test (tests/test_gpu_session.py) runs every step at tiny sizes:
#   bash benchmarks/gpu_session.sh --device cpu --tiny --out /tmp/gpu-smoke
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
TINY=0
OUT_DIR=${OUT:-/tmp/gpu-session}
DATA_DIR=""
SPEEDRUN_SEEDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --data-dir) DATA_DIR=$2; shift 2 ;;
    --seeds) SPEEDRUN_SEEDS=$2; shift 2 ;;
    *) echo "gpu_session.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT_DIR" || exit 2
LOG="$OUT_DIR/gpu_session.log"
SUMMARY="$OUT_DIR/summary.txt"
: >"$LOG"
: >"$SUMMARY"

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PYTHON=.venv/bin/python
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # no install needed on a bare machine
export PYTHONUNBUFFERED=1
[ -n "$DATA_DIR" ] && export RESNETLAB_DATA="$PWD/$DATA_DIR"
[ -n "$DATA_DIR" ] && [ "${DATA_DIR:0:1}" = / ] && export RESNETLAB_DATA="$DATA_DIR"

# step NAME SECONDS COMMAND...: run with a time cap, log its output, note its status and time.
step() {
  local name=$1 cap=$2
  shift 2
  local start=$SECONDS
  echo "=== $name (cap ${cap}s): $*" | tee -a "$LOG"
  timeout --kill-after=10 "$cap" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  local took=$((SECONDS - start))
  local verdict=ok
  [ "$rc" = 0 ] || verdict="FAILED (exit $rc)"
  [ "$rc" = 124 ] && verdict="TIMED OUT"
  printf '%-22s %-18s %5ss\n' "$name" "$verdict" "$took" | tee -a "$SUMMARY" "$LOG"
}

KILL_TEST=tests/test_train_kill.py::test_a_run_killed_mid_epoch_resumes_to_the_same_weights
if [ "$TINY" = 1 ]; then
  TESTS="tests/test_cuda.py $KILL_TEST[cpu]"  # the CUDA tests skip; the kill test's code runs
  GPU_BENCH=(--device "$DEVICE" --steps 1 --batch-size 4 --image-size 64)  # no --compile: minutes on a CPU
  SPEEDRUN=(--recipe speedrun --epochs 1 --train-subset 2048 --val-size 500 --no-test --seeds 1 --target 0.5)
  FOLDER=(--images 48 --batch-size 16 --steps 2 --train-size 32)  # the loader stays at 224 px
  INFERENCE=(--model resnet20 --batch 8 --rounds 1)
else
  TESTS="tests/test_cuda.py $KILL_TEST[cuda]"
  GPU_BENCH=(--device "$DEVICE" --compile)
  SPEEDRUN=(--recipe speedrun-94 --seeds "$SPEEDRUN_SEEDS" --target 0.94)
  FOLDER=(--images 2000 --batch-size 256 --steps 30)
  INFERENCE=(--model resnet50 --batch 256 --rounds 3)
fi

{
  echo "host: $(hostname), $(nproc) CPUs, $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PYTHON" -c "import torch, resnetlab; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} 2>&1 | tee -a "$LOG"

step cuda-tests 300 "$PYTHON" -m pytest -q -p no:cacheprovider $TESTS
step throughput 240 "$PYTHON" -m benchmarks.gpu "${GPU_BENCH[@]}"
step time-to-accuracy 420 "$PYTHON" -m benchmarks.time_to_accuracy "${SPEEDRUN[@]}" --device "$DEVICE"
step folder-loader 180 "$PYTHON" -m benchmarks.gpu_feed --device "$DEVICE" "${FOLDER[@]}"
step inference 180 "$PYTHON" -m benchmarks.gpu_infer --device "$DEVICE" "${INFERENCE[@]}"

echo "=== summary" | tee -a "$LOG"
cat "$SUMMARY" | tee -a "$LOG"
! grep -q -e FAILED -e "TIMED OUT" "$SUMMARY"
