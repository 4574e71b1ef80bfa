#!/usr/bin/env bash
# The one prepared GPU check (DESIGN.md "GPU validation"), for a fresh lent H100/H200:
# build the CUDA extension, run tests/, `python -m fastspec` and every bench/bench_*.py.
#
#   bench/gpu_check.sh OUTDIR [FAMILY ...]
#
# FAMILY (fwht, fftconv, ...) restricts the tests to that family's (tests/test_FAMILY*.py
# and its drop-in's or other tests, see COMPAT_TESTS) and the benchmarks to bench/bench_FAMILY.py, so a
# second call can finish what a first could not; the FWHT profiler and sanitizer steps run
# only with fwht (or no FAMILY), its tuning sweep only when fwht is named, the fft_conv
# profiler step with fftconv (or no FAMILY), the butterfly sanitizer step with butterfly (or no
# FAMILY). The CUDA butterfly kernel runs for real in tests/test_butterfly.py (its `cuda`
# params); tests/test_butterfly_cuda_on_cpu.py and _sm90.py skip themselves on a GPU.
# OUTDIR gets gpu_check.log (this output: versions, build, benchmarks, the tuning sweep
# of bench/tune_fwht.py, summary), pytest.log, main.log, <family>-<device>.json/.png per
# benchmark, and, where the tools run, ncu.log (Nsight Compute: speed of light, occupancy,
# launch statistics of the FWHT kernels at the benchmark shape), ncu-fftconv.log (the same
# for the Triton fft_conv kernels at L = 1K and 16K) and sanitizer.log
# (compute-sanitizer memcheck of both GPU backends, racecheck of the CUDA kernel; for the
# butterfly kernel sanitizer-butterfly.log). Each
# step has a timeout inside one overall budget (GPU_CHECK_BUDGET_S, default 500 s; the
# last PROFILE_RESERVE_S (100 s with fwht, 60 more when fwht is named, 45 with fftconv, 40
# with butterfly)
# are kept for the sweep, the profilers and the sanitizer, and BENCH_MIN_S = 60 for each benchmark; the tests get at most PYTEST_CAP_S,
# default 220, and never the time those reserves and 30 s for the main job need), so the script ends
# inside 9 minutes. Each benchmark gets an equal share of what is left when it starts. A
# failing step does not stop the later ones, and the exit status is 1 if any step failed.
# PYTHON overrides the interpreter.
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: $0 OUTDIR [FAMILY ...]" >&2; exit 2; }
mkdir -p "$1"
OUTDIR=$(cd "$1" && pwd)
shift
FAMILIES=("$@")
cd "$(dirname "$0")/.."
declare -A COMPAT_TESTS=([fwht]="tests/test_compat_fast_hadamard_transform.py tests/test_hadamard.py"
                         [fftconv]="tests/test_compat_flashfftconv.py"
                         [gaunt]="tests/test_spherical.py"
                         [ssm]="tests/test_linear_scan.py tests/test_selective_scan.py tests/test_selective_scan_cpu.py")
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

  # Families with profiler steps after the benchmarks, and the seconds those steps keep.
  local -A profile=([fwht]=1 [fftconv]=1 [butterfly]=1)
  local tests=(tests/) benches=(bench/bench_*.py) f
  if ((${#FAMILIES[@]})); then
    tests=() benches=() profile=()
    for f in "${FAMILIES[@]}"; do
      # shellcheck disable=SC2206
      tests+=(tests/test_"$f"*.py ${COMPAT_TESTS[$f]:-})
      benches+=(bench/bench_"$f".py)
      [[ $f == fwht || $f == fftconv || $f == butterfly ]] && profile[$f]=1
      [[ $f == fwht ]] && profile[tune_fwht]=1
    done
  fi
  local reserve=$(( ${profile[fwht]:-0} * 100 + ${profile[tune_fwht]:-0} * 60 + ${profile[fftconv]:-0} * 45
                   + ${profile[butterfly]:-0} * 40 ))
  reserve=${PROFILE_RESERVE_S:-$reserve}
  local bench_min=${BENCH_MIN_S:-60}
  # Triton compiles each kernel variant once: spread the tests over processes when
  # pytest-xdist is there (it is on the GPU image). The tests leave the main job (30 s),
  # each benchmark's minimum and the profile reserve their time.
  local xdist=() cap=${PYTEST_CAP_S:-220}
  "$PY" -c 'import xdist' 2>/dev/null && xdist=(-n 12)
  local room=$((DEADLINE - SECONDS - 5 - 30 - ${#benches[@]} * bench_min - reserve))
  TAIL=25 step "pytest ${tests[*]}" $((room < cap ? room : cap)) "$OUTDIR/pytest.log" \
    "$PY" -m pytest -q -ra -p no:cacheprovider --durations=10 "${xdist[@]}" "${tests[@]}"
  TAIL=60 step "python -m fastspec" 60 "$OUTDIR/main.log" "$PY" -m fastspec

  local i
  for i in "${!benches[@]}"; do
    local left=$((DEADLINE - SECONDS - 5 - reserve)) n=$((${#benches[@]} - i))
    step "$(basename "${benches[$i]}")" $((left / n)) - "$PY" "${benches[$i]}" --out "$OUTDIR"
  done

  if ((${profile[fwht]:-0})); then
    # Variants of the base-block kernel (tile sizes, stages, warps) at two model widths:
    # only when fwht is named (the sweep of 2026-11-28 found at most 4%).
    if ((${profile[tune_fwht]:-0})); then
      TAIL=20 step "tune_fwht.py" 60 - "$PY" bench/tune_fwht.py
    fi

    # One launch per kernel and size (bench/profile_fwht.py), watched by the tools.
    if command -v ncu >/dev/null; then
      TAIL=60 step "ncu fwht kernels" 55 "$OUTDIR/ncu.log" ncu --clock-control none -k regex:fwht \
        --section SpeedOfLight --section Occupancy --section LaunchStats \
        "$PY" bench/profile_fwht.py --sizes 4096 32768 11008 --dtypes float16
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
  fi
  if ((${profile[fftconv]:-0})) && command -v ncu >/dev/null; then
    # The Triton fft_conv forward at a one-tile and a two-level length (two calls each).
    TAIL=40 step "ncu fftconv kernels" 45 "$OUTDIR/ncu-fftconv.log" ncu --clock-control none -k regex:fftconv \
      --section SpeedOfLight --section Occupancy --section LaunchStats \
      "$PY" bench/profile_fftconv.py --lengths 1024 16384 --dtypes float16 --batch 8 --channels 64 --backends triton
  fi

  if ((${profile[butterfly]:-0})) && command -v compute-sanitizer >/dev/null &&
     "$PY" -c 'import fastspec, sys; sys.exit(not fastspec.backends()["cuda"].available)'; then
    # The CUDA butterfly kernel (every dtype, n = 2, 16, 256, 4096, both directions) under memcheck and racecheck.
    TAIL=15 step "compute-sanitizer butterfly" 40 "$OUTDIR/sanitizer-butterfly.log" bash -c "
      compute-sanitizer --tool memcheck --error-exitcode 1 $PY -m pytest -q -p no:cacheprovider \
        tests/test_butterfly.py -k 'cuda and dtypes_match' &&
      compute-sanitizer --tool racecheck --error-exitcode 1 $PY -m pytest -q -p no:cacheprovider \
        tests/test_butterfly.py -k 'cuda and dtypes_match and float32'"
  fi

  echo
  echo "=== summary ($((SECONDS))s in all; files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' '))"
  printf '%-26s %-14s %5s\n' step status s
  printf '%s\n' "${SUMMARY[@]}"
  return "$FAILED"
}

main 2>&1 | tee "$OUTDIR/gpu_check.log"
