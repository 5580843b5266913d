#!/usr/bin/env bash
# The GPU figures of docs/performance.md, on a machine where JAX (and PyTorch, for the
# peers) see a GPU. Every stage writes its log (and JSON) into OUT_DIR and is cut off at its
# time limit, so that one stage's trouble does not cost the others; the exit status is 1 if
# any stage failed or ran out of time.
#
#   bash benchmarks/gpu_run.sh OUT_DIR [tests] [variants] [zoo] [table]   (default: all four)
#
#   tests     the training core's tests on the GPU, the plain trainer's matrix products at full
#             float32 precision (the fast kernels ask for it themselves)
#   variants  benchmarks/epoch_variants.py: one epoch per --unroll setting (UNROLLS)
#   zoo       benchmarks/zoo_time.py: the paper-size zoos, FFNN then CNN
#   table     benchmarks/train_table.py: against PyTorch's loop and torch.func on the GPU
#
# Limits in seconds: T_TESTS, T_VARIANTS, T_ZOO (each zoo), T_TABLE; PYTHON (python3).
set -u
usage="usage: bash benchmarks/gpu_run.sh OUT_DIR [tests] [variants] [zoo] [table]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
out=$1
shift
case $out in
  tests|variants|zoo|table) echo "error: OUT_DIR is missing ('$out' is a stage); $usage" >&2
                            exit 2 ;;
esac
stages=${*:-tests variants zoo table}
for stage in $stages; do
  case $stage in
    tests|variants|zoo|table) ;;
    *) echo "error: unknown stage '$stage' (tests, variants, zoo, table)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2  # the repository root: tests/ and benchmarks/ below it
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() { echo "== $(date -u +%H:%M:%S) $*"; }
run() {  # run LIMIT LOG COMMAND...: the command's output to the screen and LOG
  local limit=$1 log=$2
  shift 2
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ]; then
    echo "!! exit $rc (124 or 137: over its ${limit} s limit): $*" | tee -a "$log"
    status=1
  fi
}

step "devices"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1
"$py" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"

for stage in $stages; do
  case $stage in
    tests)
      step "tests"
      JAX_DEFAULT_MATMUL_PRECISION=highest run "${T_TESTS:-300}" "$out/tests.log" \
        "$py" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_core.py \
          tests/test_lowering.py
      ;;
    variants)
      step "variants"
      run "${T_VARIANTS:-150}" "$out/variants.log" "$py" benchmarks/epoch_variants.py \
        --unroll ${UNROLLS:-1 4 16} --json "$out/variants.json"
      ;;
    zoo)
      for arch in ffnn cnn; do
        step "zoo $arch"
        run "${T_ZOO:-150}" "$out/zoo_$arch.log" "$py" benchmarks/zoo_time.py --arch "$arch"
      done
      ;;
    table)
      step "table"
      run "${T_TABLE:-200}" "$out/table.log" "$py" benchmarks/train_table.py --repeats 3 \
        --memory-train 0
      ;;
  esac
done
step "done"
exit $status
