#!/usr/bin/env bash
# One command for a GPU machine (no internet): build flashts._C in place, run the whole test suite on the GPU,
# run the benchmark, and write logs and results into OUTDIR. Finishes well inside 10 minutes on an H100.
#
#   bash bench/gpu_check.sh OUTDIR [extra args for python -m bench]
#
# Optional wheels (e.g. flash-linear-attention, a pure-Python wheel) placed in .whl/ are installed first into
# /tmp/flashts-site (see the device notes in README.md). Everything after the build keeps going on failure,
# so one broken part does not hide the others; the exit status is that of the test suite.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR [bench args]}
shift || true
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
    stamp "installing carried wheels from .whl/"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/flashts-site .whl/*.whl \
        && export PYTHONPATH=/tmp/flashts-site${PYTHONPATH:+:$PYTHONPATH}
fi

{
    nvidia-smi || true
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"
    nvcc --version | tail -1
    git rev-parse HEAD 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
stamp "env: $(tail -n 2 "$OUT/env.txt" | head -n 1)"

stamp "building flashts._C (log: build.log)"
FLASHTS_BUILD_CUDA=1 FLASHTS_CUDA_ARCHS=${FLASHTS_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} \
    timeout 300 $PY -m pip install -e . --no-build-isolation --no-deps -v > "$OUT/build.log" 2>&1
stamp "build exit $? ; flashts: $($PY -c 'import flashts; print(flashts.backend_info())' 2>&1 | tail -n 1)"

stamp "tests (log: tests.log)"
timeout 300 $PY -m pytest tests -q -ra --durations=25 -p no:cacheprovider > "$OUT/tests.log" 2>&1
rc=$?
stamp "tests exit $rc: $(tail -n 1 "$OUT/tests.log")"

stamp "benchmark (log: bench.log)"
timeout 270 $PY -m bench --device cuda --out "$OUT" --time-limit 230 "$@" > "$OUT/bench.log" 2>&1
stamp "bench exit $?"
# the device tool brings back at most 8 files: pack the plots into one archive
if ls "$OUT"/*.png >/dev/null 2>&1; then
    (cd "$OUT" && tar cf plots.tar ./*.png && rm -f ./*.png)
fi
stamp "done; files: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
