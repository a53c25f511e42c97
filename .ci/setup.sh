# Shared set-up for .ci/run (tests) and bench/run.sh (benchmark): a virtual environment in .venv with
# torch (the CPU build on machines without a GPU), triton, the test and bench tools, and flashts installed
# in place. Source it from the repository root: `. .ci/setup.sh`. Idempotent: a second run only checks.
set -euo pipefail
PY=${PYTHON:-python3}
VENV=${FLASHTS_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
fi
export PATH="$PWD/$VENV/bin:$PATH"
if ! python -c "import torch, triton, pytest, xdist, numpy, ninja, pybind11, matplotlib, tqdm, statsmodels, mypy" 2>/dev/null; then
    echo "[setup] installing dependencies"
    python -m pip install -q --upgrade pip setuptools wheel
    # torch==2.13.0 is the CPU build kept on this project's machines; elsewhere any torch>=2.4 works
    # (install it first yourself and this step keeps it).
    if ! python -c "import torch" 2>/dev/null; then
        python -m pip install -q "torch==2.13.0" || python -m pip install -q "torch>=2.4"
    fi
    python -m pip install -q triton numpy pytest pytest-xdist ninja pybind11 matplotlib tqdm statsmodels mypy
fi
# SASS tools for tests/test_cuda_resources.py (cuobjdump + nvdisasm; PyPI wheels) when nvcc is there
if command -v nvcc >/dev/null 2>&1 && ! python -c "import sys,os; sys.exit(not any(os.path.isfile(os.path.join(p,'nvidia/cu13/bin/nvdisasm')) for p in sys.path))"; then
    python -m pip install -q nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm || echo "[setup] could not install cuobjdump/nvdisasm"
fi
# pyproject.toml's SPDX licence field needs setuptools >= 77 for the in-place (no-build-isolation) install
python -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null \
    || python -m pip install -q "setuptools>=77"
# (checked from / so that the checkout's own flashts/ folder does not shadow the installed package)
if ! (cd / && python -c "import flashts.kernels" 2>/dev/null) \
        || [ "$(cd / && python -c 'import flashts,os;print(os.path.dirname(os.path.dirname(flashts.__file__)))')" != "$PWD" ]; then
    echo "[setup] installing flashts in place"
    python -m pip install -q -e . --no-build-isolation --no-deps
fi
python - <<'PY'
import torch, triton, flashts
print(f"[setup] python ok: torch {torch.__version__}, triton {triton.__version__}, "
      f"cuda {torch.version.cuda}, gpu {torch.cuda.is_available()}, flashts._C {flashts.backend_info()['cuda_ext']}")
PY
