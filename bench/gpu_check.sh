#!/usr/bin/env bash
# The one prepared GPU check (DESIGN.md "GPU validation"), for a fresh lent H100/H200:
# build the CUDA extension, run tests/, `python -m fastspec` and every bench/bench_*.py.
#
#   bench/gpu_check.sh OUTDIR
#
# OUTDIR gets gpu_check.log (this output: versions, build, benchmarks, the tuning sweep
# of bench/tune_fwht.py, summary), pytest.log, main.log, <family>-<device>.json/.png per
# benchmark, and, where the tools run, ncu.log (Nsight Compute: speed of light, occupancy,
# launch statistics of the FWHT kernels at the benchmark shape), ncu-fftconv.log (the same
# for the Triton fft_conv kernels at L = 1K and 16K) and sanitizer.log
# (compute-sanitizer memcheck of both GPU backends, racecheck of the CUDA kernel). Each
# step has a timeout inside one overall budget (GPU_CHECK_BUDGET_S, default 500 s; the
# last PROFILE_RESERVE_S = 205 of it are kept for the sweep, the profilers and the
# sanitizer; PYTEST_CAP_S, default 220, caps the tests), so the script ends inside 9 minutes; a failing step does not stop the later
# ones, and the exit status is 1 if any step failed. PYTHON overrides the interpreter.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-500}))
export PYTHONUNBUFFERED=1
SUMMARY=()
FAILED=0
LAST_RC=0

# step NAME CAP_S LOG CMD...: run CMD under a timeout of min(CAP_S, time left); its
# output goes to LOG (then its last TAIL lines are shown) or, for LOG '-', here.
# Records the outcome in SUMMARY and LAST_RC.
step() {
  local name=$1 cap=$2 log=$3 rc=0 t0=$SECONDS
  shift 3
  local left=$((DEADLINE - SECONDS - 5))
  local limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    SUMMARY+=("$(printf '%-26s %-14s %5s' "$name" "SKIPPED" "0")")
    FAILED=1 LAST_RC=124
    return 0
  fi
  echo "=== $name (timeout ${limit}s)"
  if [[ $log == - ]]; then
    timeout -k 10 "$limit" "$@" || rc=$?
  else
    timeout -k 10 "$limit" "$@" >"$log" 2>&1 || rc=$?
    tail -n "${TAIL:-20}" "$log"
  fi
  local status=ok
  LAST_RC=$rc
  ((rc == 0)) || { status="FAIL rc=$rc"; FAILED=1; }
  ((rc != 124 && rc != 137)) || status="TIMEOUT"
  SUMMARY+=("$(printf '%-26s %-14s %5s' "$name" "$status" "$((SECONDS - t0))")")
  return 0
}

main() {
  echo "=== gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC') in $PWD"
  nvidia-smi || echo "nvidia-smi failed"
  "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__, "gpu", torch.cuda.is_available() and torch.cuda.get_device_name())'
  nvcc --version | tail -n 2 || echo "nvcc not found"

  step "build cuda extension" 150 - env TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 FASTSPEC_BUILD_CUDA=1 \
    "$PY" -m pip install --no-build-isolation --no-deps -e .
  if ((LAST_RC != 0)); then
    echo "CUDA extension build failed: installing without it (triton and torch backends only)"
    step "install without cuda" 60 - env FASTSPEC_BUILD_CUDA=0 "$PY" -m pip install --no-build-isolation --no-deps -e .
  fi
  "$PY" -c 'import fastspec; [print(f"backend {k}: {v}") for k, v in fastspec.backends().items()]' || FAILED=1

  # Triton compiles each kernel variant once: spread the tests over processes when
  # pytest-xdist is there (it is on the GPU image).
  local xdist=()
  "$PY" -c 'import xdist' 2>/dev/null && xdist=(-n 12)
  TAIL=25 step "pytest tests/" "${PYTEST_CAP_S:-220}" "$OUTDIR/pytest.log" \
    "$PY" -m pytest -q -ra -p no:cacheprovider --durations=10 "${xdist[@]}" tests/
  TAIL=60 step "python -m fastspec" 60 "$OUTDIR/main.log" "$PY" -m fastspec

  local benches=(bench/bench_*.py) i reserve=${PROFILE_RESERVE_S:-205}
  for i in "${!benches[@]}"; do
    local left=$((DEADLINE - SECONDS - 5 - reserve)) n=$((${#benches[@]} - i))
    step "$(basename "${benches[$i]}")" $((left / n)) - "$PY" "${benches[$i]}" --out "$OUTDIR"
  done

  # Variants of the base-block kernel (tile sizes, stages, warps) at two model widths.
  TAIL=20 step "tune_fwht.py" 60 - "$PY" bench/tune_fwht.py

  # One launch per kernel and size (bench/profile_fwht.py), watched by the tools.
  if command -v ncu >/dev/null; then
    TAIL=60 step "ncu fwht kernels" 55 "$OUTDIR/ncu.log" ncu --clock-control none -k regex:fwht \
      --section SpeedOfLight --section Occupancy --section LaunchStats \
      "$PY" bench/profile_fwht.py --sizes 4096 32768 11008 --dtypes float16
    # The fft_conv kernels at a one-tile and a two-level length (the forward; two calls each).
    TAIL=40 step "ncu fftconv kernels" 45 "$OUTDIR/ncu-fftconv.log" ncu --clock-control none -k regex:fftconv \
      --section SpeedOfLight --section Occupancy --section LaunchStats \
      "$PY" bench/profile_fftconv.py --lengths 1024 16384 --dtypes float16 --batch 8 --channels 64 --backends triton
  else
    echo "ncu not found: no profile"
  fi
  if command -v compute-sanitizer >/dev/null; then
    # More rows than resident blocks: the CUDA kernel's persistent loop prefetches.
    TAIL=15 step "compute-sanitizer" 45 "$OUTDIR/sanitizer.log" bash -c "
      compute-sanitizer --tool memcheck --error-exitcode 1 $PY bench/profile_fwht.py --rows 1200 --sizes 2048 32768 11008 &&
      compute-sanitizer --tool racecheck --error-exitcode 1 $PY bench/profile_fwht.py --rows 1200 --backends cuda"
  else
    echo "compute-sanitizer not found: no memcheck/racecheck"
  fi

  echo
  echo "=== summary ($((SECONDS))s in all; files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' '))"
  printf '%-26s %-14s %5s\n' step status s
  printf '%s\n' "${SUMMARY[@]}"
  return "$FAILED"
}

main 2>&1 | tee "$OUTDIR/gpu_check.log"
