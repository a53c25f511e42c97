#!/usr/bin/env bash
# One command for a GPU machine (no internet): build flashts._C in place, run the test suite on the GPU,
# run the benchmark, and write logs and results into OUTDIR. Sized for one 10-minute call on an H100.
#
#   bash bench/gpu_check.sh OUTDIR [extra args for python -m bench]
#
# Environment knobs (all optional):
#   STEPS="build tests bench decode tune e2e"   which parts to run (default: build tests decode bench)
#   TUNE_ARGS="--op linear; --op swa --D 128"   python -m bench.tune runs for the tune step, ';'-separated
#   PYTEST_ARGS="..."               pytest arguments; default '-k "triton or cuda" -m "not slow"' (the GPU
#                                   cases: ~160 s on an H100; the torch-backend cases run in CI), "" = all
#   TEST_WORKERS=12                 pytest-xdist workers when pytest-xdist is installed (0: no xdist)
#   T_BUILD/T_TESTS/T_DECODE/T_TUNE/T_BENCH/T_E2E   per-part time limits in seconds (T_TUNE: each tune run)
#   E2E_ARGS="..."                  arguments of python -m bench.e2e_forecast (default --preset gpu)
# A prebuilt extension can travel in .gpu_prebuilt/ (ignored by git): it is used when its recorded hash of
# csrc/ + setup.py matches the checkout, so a second call skips the build. Each build leaves the .so and its
# hash in OUTDIR for that purpose.
# Optional wheels (e.g. flash-linear-attention + fla-core, pure-Python) placed in .whl/ are installed first
# into /tmp/flashts-site. Every part keeps going on failure, so one broken part does not hide the others;
# the exit status is that of the test suite.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR [bench args]}
shift || true
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STEPS=${STEPS:-build tests decode bench}
PYTEST_ARGS=${PYTEST_ARGS-'-k "triton or cuda" -m "not slow"'}
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }

if ls .whl/*.whl >/dev/null 2>&1; then
    stamp "installing carried wheels from .whl/"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/flashts-site .whl/*.whl \
        && export PYTHONPATH=/tmp/flashts-site${PYTHONPATH:+:$PYTHONPATH}
fi

{
    nvidia-smi || true
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
    $PY -c "import statsmodels; print('statsmodels', statsmodels.__version__)" || true
    nvcc --version | tail -1
    git rev-parse HEAD 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
stamp "env: $(tail -n 3 "$OUT/env.txt" | head -n 1)"

src_hash=$(cat setup.py $(find csrc -type f | sort) | sha256sum | cut -c1-16)
if want build; then
    pre=$(ls .gpu_prebuilt/_C*.so 2>/dev/null | head -n 1)
    if [ -n "$pre" ] && [ "$(cat .gpu_prebuilt/csrc.sha 2>/dev/null)" = "$src_hash" ]; then
        stamp "using prebuilt $pre (hash $src_hash)"
        cp "$pre" flashts/
        FLASHTS_BUILD_CUDA=0 $PY -m pip install -q -e . --no-build-isolation --no-deps > "$OUT/build.log" 2>&1
    else
        stamp "building flashts._C (log: build.log)"
        FLASHTS_BUILD_CUDA=1 FLASHTS_CUDA_ARCHS=${FLASHTS_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} \
            timeout ${T_BUILD:-300} $PY -m pip install -e . --no-build-isolation --no-deps -v > "$OUT/build.log" 2>&1
        stamp "build exit $?"
        so=$(ls flashts/_C*.so 2>/dev/null | head -n 1)
        if [ -n "$so" ]; then cp "$so" "$OUT/" && echo "$src_hash" > "$OUT/csrc.sha"; fi
    fi
else
    FLASHTS_BUILD_CUDA=0 $PY -m pip install -q -e . --no-build-isolation --no-deps > "$OUT/build.log" 2>&1
fi
stamp "flashts: $($PY -c 'import flashts; print(flashts.backend_info())' 2>&1 | tail -n 1)"

rc=0
if want tests; then
    xdist=()
    if [ "${TEST_WORKERS:-12}" != 0 ] && $PY -c "import xdist" 2>/dev/null; then xdist=(-n "${TEST_WORKERS:-12}"); fi
    tmo=()
    if $PY -c "import pytest_timeout" 2>/dev/null; then tmo=(--timeout=180); fi
    # end the session cleanly (with its failure report) before the outer timeout kills it
    if $PY -m pytest --help 2>/dev/null | grep -q -- --session-timeout; then
        tmo+=(--session-timeout=$(( ${T_TESTS:-300} - 25 )))
    fi
    $PY -c "import pytest_benchmark" 2>/dev/null && tmo+=(-p no:benchmark)
    eval "extra=(${PYTEST_ARGS:-})"   # shell words, so a quoted -k expression survives
    stamp "tests (log: tests.log) ${xdist[*]} ${PYTEST_ARGS:-}"
    timeout ${T_TESTS:-300} $PY -m pytest tests -q -rfE --tb=short --durations=15 -p no:cacheprovider "${xdist[@]}" "${tmo[@]}" \
        "${extra[@]}" > "$OUT/tests.log" 2>&1
    rc=$?
    stamp "tests exit $rc: $(tail -n 1 "$OUT/tests.log")"
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | cut -c1-200 | head -n 40
fi

if want decode; then
    stamp "decode-step latency (log: decode.log)"
    timeout ${T_DECODE:-120} $PY -m bench.decode --out "$OUT" > "$OUT/decode.log" 2>&1
    stamp "decode exit $?"
    grep "^\[decode\]" "$OUT/decode.log" | cut -c1-160
fi

if want tune; then
    IFS=';' read -ra tune_runs <<< "${TUNE_ARGS:---op linear; --op swa --D 128; --op latte}"
    for targs in "${tune_runs[@]}"; do
        stamp "tune: $targs (log: tune.log)"
        timeout ${T_TUNE:-150} $PY -m bench.tune $targs --out "$OUT" --time-limit $(( ${T_TUNE:-150} - 30 )) \
            >> "$OUT/tune.log" 2>&1
        stamp "tune exit $?: $(grep '^best:' "$OUT/tune.log" | tail -n 1 | cut -c1-150)"
    done
fi

if want bench; then
    stamp "benchmark (log: bench.log)"
    timeout ${T_BENCH:-270} $PY -m bench --device cuda --out "$OUT" --time-limit $(( ${T_BENCH:-270} - 40 )) "$@" \
        > "$OUT/bench.log" 2>&1
    stamp "bench exit $?"
    tail -n 5 "$OUT/bench.log"
fi

if want e2e; then
    stamp "e2e forecasting (log: e2e.log)"
    timeout ${T_E2E:-200} $PY -m bench.e2e_forecast --device cuda --out "$OUT/e2e" ${E2E_ARGS:---preset gpu} \
        > "$OUT/e2e.log" 2>&1
    stamp "e2e exit $?"
fi

# the device tool brings back at most 8 files: everything but the extension goes into one archive
stamp "done; files: $(ls "$OUT" | tr '\n' ' ')"
(cd "$OUT" && tar cf gpu_check.tar --exclude='_C*.so' --exclude=gpu_check.tar . && find . -mindepth 1 -maxdepth 1 \
    ! -name gpu_check.tar ! -name '_C*.so' ! -name csrc.sha -exec rm -rf {} +)
exit $rc
