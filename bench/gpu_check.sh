#!/usr/bin/env bash
# One prepared GPU measurement in a single device call of at most 8 minutes (sized for an H200/H100):
#
#   bash bench/gpu_check.sh OUTDIR                      # on the GPU machine (OUTDIR: the device tool's $OUT)
#   GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh OUTDIR  # rehearsal on CPU: every step's command with tiny CPU
#                                                       # shapes or --collect-only (tests/test_gpu_check.py)
#
# Steps, most important first (a cut by the time limit loses only the later ones); per-step limits in s:
#   1 build     flashts._C for sm_90 (a matching prebuilt .so in .gpu_prebuilt/ is used instead)      T_BUILD=100
#   2 aaren     the Aaren-Triton tests (the fix never run on a GPU yet)                                T_AAREN=40
#   3 goals     python -m bench at the goal shapes (T=8192; autotune on: FLASHTS_AUTOTUNE=1)          T_GOALS=100
#   4 decode    python -m bench.decode (T=1 step latency, CUDA graphs)                                 T_DECODE=30
#   5 tsweep    python -m bench, T = 1k..64k, triton + cuda, fwd+bwd                                   T_SWEEP=70
#   6 tests     the GPU test subset: pytest -k "triton or cuda" -m "not slow" (xdist when present)     T_TESTS=75
#   7 memcheck  compute-sanitizer --tool memcheck over the CUDA tests                                  T_MEMCHECK=60
# Sum of the limits: 475 s (+ a few s of setup): fits one 8-minute call; STEPS="..." runs a subset.
# The H100 call of 2026-11-23 took 58 s to build and 159 s for the whole GPU subset with -n 12: the tests step
# here runs what fits in its limit (the Aaren tests already ran in step 2).
# Writes OUTDIR/gpu_check.json (per step: command, exit status, seconds) and OUTDIR/gpu_check.md, plus the logs,
# the benchmark JSON/markdown/plots of each step, packed into OUTDIR/gpu_check.tar (the device tool returns few
# files); the exit status is that of the first failing step among aaren/tests (0 if they pass).
set -uo pipefail
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DRY=${GPU_CHECK_DRY_RUN:-0}
STEPS=${STEPS:-build aaren goals decode tsweep tests memcheck}
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
RESULTS=()   # JSON objects, one per step
rc_main=0

# run_step NAME LIMIT_S CMD... : run with a time limit, log to OUT/NAME.log, record the outcome
run_step() {
    local name=$1 limit=$2; shift 2
    stamp "$name (limit ${limit}s): $*"
    local s=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    local secs=$(( $(date +%s) - s ))
    stamp "$name exit $rc in ${secs}s: $(tail -n 1 "$OUT/$name.log" | cut -c1-150)"
    local cmd
    cmd=$($PY -c 'import json, sys; print(json.dumps(" ".join(sys.argv[1:])))' "$@")
    RESULTS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $secs, \"limit\": $limit, \"command\": $cmd}")
    return $rc
}

if [ "$DRY" != 0 ]; then
    # rehearsal: CPU, the interpreter, tiny shapes; same steps, same flags where they exist on CPU
    export TRITON_INTERPRET=1 FLASHTS_AUTOTUNE=1
    DEV=cpu; BENCH_T=(--T 64 --ops linear --impls torch triton); SWEEP_T=(--T 32 64 --list); QUICK=(--quick --no-plots --device cpu); COLLECT=(--collect-only)
    TEST_WORKERS=0
else
    DEV=cuda; BENCH_T=(--T 8192); SWEEP_T=(--T 1024 4096 16384 65536); QUICK=(--device cuda); COLLECT=()
    export FLASHTS_AUTOTUNE=${FLASHTS_AUTOTUNE:-1}
fi

if ls .whl/*.whl >/dev/null 2>&1 && [ "$DRY" = 0 ]; then
    stamp "installing carried wheels from .whl/"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/flashts-site .whl/*.whl \
        && export PYTHONPATH=/tmp/flashts-site${PYTHONPATH:+:$PYTHONPATH}
fi
{
    nvidia-smi || true
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    nvcc --version 2>/dev/null | tail -1
    git rev-parse HEAD 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
stamp "env: $(grep '^torch' "$OUT/env.txt" | head -n 1)"

# 1. build
if want build; then
    src_hash=$(cat setup.py $(find csrc -type f | sort) | sha256sum | cut -c1-16)
    pre=$(ls .gpu_prebuilt/_C*.so 2>/dev/null | head -n 1)
    if [ "$DRY" != 0 ]; then
        run_step build 30 $PY -c "import ast, sys; ast.parse(open('setup.py').read()); print('setup.py parses; csrc hash $src_hash')"
    elif [ -n "$pre" ] && [ "$(cat .gpu_prebuilt/csrc.sha 2>/dev/null)" = "$src_hash" ]; then
        cp "$pre" flashts/
        run_step build "${T_BUILD:-100}" env FLASHTS_BUILD_CUDA=0 $PY -m pip install -q -e . --no-build-isolation --no-deps
    else
        run_step build "${T_BUILD:-100}" env FLASHTS_BUILD_CUDA=1 FLASHTS_CUDA_ARCHS=${FLASHTS_CUDA_ARCHS:-90} \
            MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install -e . --no-build-isolation --no-deps -v
        so=$(ls flashts/_C*.so 2>/dev/null | head -n 1)
        if [ -n "$so" ]; then cp "$so" "$OUT/" && echo "$src_hash" > "$OUT/csrc.sha"; fi
    fi
    stamp "flashts: $($PY -c 'import flashts; print(flashts.backend_info())' 2>&1 | tail -n 1 | cut -c1-200)"
fi

# 2. the Aaren-Triton fix (the first thing to know: whether Triton can be Aaren's first choice again)
if want aaren; then
    run_step aaren "${T_AAREN:-40}" $PY -m pytest tests/test_prefix_scan_triton.py -q -x -k aaren -p no:cacheprovider \
        -W "ignore::RuntimeWarning" "${COLLECT[@]}"
    rc=$?; [ $rc_main = 0 ] && rc_main=$rc
fi

# 3. goal-table rows (autotune on)
if want goals; then
    run_step goals "${T_GOALS:-100}" $PY -m bench "${QUICK[@]}" "${BENCH_T[@]}" --out "$OUT" --tag goals \
        --time-limit $(( ${T_GOALS:-100} - 20 )) --no-progress
fi

# 4. decode step latency
if want decode; then
    if [ "$DRY" != 0 ]; then
        run_step decode 60 $PY -m bench.decode --device cpu --B 2 --H 2 --D 8 --L 4 --iters 2 --out "$OUT" --quiet
    else
        run_step decode "${T_DECODE:-30}" $PY -m bench.decode --device cuda --out "$OUT"
    fi
fi

# 5. T-sweep: one series per op, triton and cuda backends, fwd+bwd
if want tsweep; then
    impls=(--impls triton cuda); [ "$DRY" != 0 ] && impls=(--impls triton)
    run_step tsweep "${T_SWEEP:-70}" $PY -m bench "${QUICK[@]}" "${SWEEP_T[@]}" "${impls[@]}" --modes fwdbwd \
        --out "$OUT" --tag tsweep --time-limit $(( ${T_SWEEP:-70} - 15 )) --no-progress
fi

# 6. the GPU test subset
if want tests; then
    xdist=()
    if [ "${TEST_WORKERS:-12}" != 0 ] && $PY -c "import xdist" 2>/dev/null; then xdist=(-n "${TEST_WORKERS:-12}"); fi
    run_step tests "${T_TESTS:-75}" $PY -m pytest tests -q -rfE --tb=short -p no:cacheprovider "${xdist[@]}" \
        -k "triton or cuda" -m "not slow" -W "ignore::RuntimeWarning" "${COLLECT[@]}"
    rc=$?; [ $rc_main = 0 ] && rc_main=$rc
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | cut -c1-200 | head -n 30
fi

# 7. memcheck over the CUDA tests (whatever fits in the limit)
if want memcheck; then
    sanitizer=$(command -v compute-sanitizer || echo "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")/compute-sanitizer")
    if [ "$DRY" != 0 ]; then
        run_step memcheck 60 bash -c "set -o pipefail; echo 'sanitizer: $sanitizer'; $PY -m pytest tests/test_linear_cuda.py tests/test_sliding_window_cuda.py tests/test_auto_correlation_cuda.py tests/test_prefix_scan_cuda.py -q -m 'not slow' --collect-only -p no:cacheprovider | tail -n 1"
    else
        run_step memcheck "${T_MEMCHECK:-60}" "$sanitizer" --tool memcheck --error-exitcode 7 --print-limit 20 \
            $PY -m pytest tests/test_linear_cuda.py tests/test_sliding_window_cuda.py tests/test_auto_correlation_cuda.py \
            tests/test_prefix_scan_cuda.py -q -x -m "not slow" -p no:cacheprovider
    fi
fi

# summary: JSON + markdown
{
    printf '{"dry_run": %s, "steps": [' "$([ "$DRY" != 0 ] && echo true || echo false)"
    (IFS=,; printf '%s' "${RESULTS[*]}")
    printf '], "seconds": %d}\n' $(( $(date +%s) - t0 ))
} > "$OUT/gpu_check.json"
$PY - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
d = json.load(open(os.path.join(out, "gpu_check.json")))
lines = [f"# gpu_check {'(dry run, CPU)' if d['dry_run'] else ''}", "", open(os.path.join(out, "env.txt")).read().strip()
         .replace("\n", "  \n"), "", "| step | exit | seconds | limit | last log line |", "|---|---|---|---|---|"]
for s in d["steps"]:
    log = os.path.join(out, s["step"] + ".log")
    last = open(log, errors="replace").read().strip().splitlines()[-1:] if os.path.exists(log) else [""]
    lines.append(f"| {s['step']} | {s['rc']} | {s['seconds']} | {s['limit']} | {(last or [''])[0][:120]} |")
lines += ["", f"Total {d['seconds']} s. Benchmark rows: the `*goals*` and `*tsweep*` markdown files in the archive."]
open(os.path.join(out, "gpu_check.md"), "w").write("\n".join(lines) + "\n")
EOF
stamp "done in $(( $(date +%s) - t0 ))s"
if [ "$DRY" = 0 ]; then
    # the device tool brings back few files: everything but the summary and the extension goes into one archive
    (cd "$OUT" && tar cf gpu_check.tar --exclude='_C*.so' --exclude=gpu_check.tar --exclude=gpu_check.json \
        --exclude=gpu_check.md . && find . -mindepth 1 -maxdepth 1 ! -name gpu_check.tar ! -name '_C*.so' \
        ! -name csrc.sha ! -name gpu_check.json ! -name gpu_check.md -exec rm -rf {} +)
fi
exit $rc_main
