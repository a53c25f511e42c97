"""Build flashts.

* Always: the pure-Python package ``flashts`` and the Triton kernels from ``kernels/`` shipped inside it as
  ``flashts.kernels`` (there is no top-level ``kernels`` module in site-packages).
* The CUDA C++ extension ``flashts._C`` from ``csrc/`` (ninja + pybind11 through torch's cpp_extension) is built
  when ``FLASHTS_BUILD_CUDA`` says so:
    - ``FLASHTS_BUILD_CUDA=auto`` (default): build when torch has CUDA and nvcc is found;
    - ``FLASHTS_BUILD_CUDA=1``: build, and fail loudly if it cannot;
    - ``FLASHTS_BUILD_CUDA=0``: never build (pure-Python install).
  ``FLASHTS_CUDA_ARCHS`` (default ``"80;90"``) lists the SM architectures to compile for.

Install: ``pip install -e . --no-build-isolation`` (the build uses the torch already installed).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# torch guesses CUDA_HOME (when unset) from the nvcc on PATH, at import of cpp_extension; a wrapper script in
# /usr/local/bin makes it guess /usr/local. Prefer the real toolkit when it is there.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and os.path.isfile("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _want_cuda() -> bool:
    mode = os.environ.get("FLASHTS_BUILD_CUDA", "auto").strip().lower()
    if mode in ("0", "false", "no", "off"):
        return False
    force = mode in ("1", "true", "yes", "on")
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception as exc:  # pragma: no cover
        if force:
            raise RuntimeError(f"FLASHTS_BUILD_CUDA=1 but torch cannot be imported: {exc}") from exc
        return False
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    if force:
        if not nvcc:
            raise RuntimeError("FLASHTS_BUILD_CUDA=1 but nvcc was not found (set CUDA_HOME or PATH)")
        return True
    return bool(nvcc) and torch.version.cuda is not None


def _cuda_extension():
    from torch.utils.cpp_extension import CUDAExtension

    archs = [a.strip() for a in os.environ.get("FLASHTS_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    sources += sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    return CUDAExtension(
        name="flashts._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        # no -std flag: torch's cpp_extension adds the standard its headers need (C++17 up to 2.x, C++20 later)
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"] + gencode,
        },
    )


ext_modules, cmdclass = [], {}
if _want_cuda():
    from torch.utils.cpp_extension import BuildExtension

    ext_modules = [_cuda_extension()]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}
    print("flashts: building the CUDA extension flashts._C", file=sys.stderr)
else:
    print("flashts: pure-Python install (FLASHTS_BUILD_CUDA=1 builds flashts._C)", file=sys.stderr)

setup(
    name="flashts",
    version="0.1.0",
    description="Fused GPU kernels for sub-quadratic attention in time-series transformers",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["flashts", "flashts.*"]) + ["flashts.kernels"],
    package_dir={"flashts.kernels": "kernels"},
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton>=3.6"],
        "test": ["pytest"],
        "bench": ["matplotlib", "tqdm"],
        "e2e": ["statsmodels>=0.14.2", "matplotlib", "tqdm"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
