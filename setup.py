"""Build flashts: the package metadata lives in ``pyproject.toml``; this file only adds what it cannot say.

* Always: the pure-Python package ``flashts`` and the Triton kernels from ``kernels/`` shipped inside it as
  ``flashts.kernels`` (there is no top-level ``kernels`` module in site-packages).
* The CUDA C++ extension ``flashts._C`` from ``csrc/`` (ninja + pybind11 through torch's cpp_extension) is built
  when ``FLASHTS_BUILD_CUDA`` says so:
    - ``FLASHTS_BUILD_CUDA=auto`` (default): build when torch has CUDA and nvcc is found;
    - ``FLASHTS_BUILD_CUDA=1``: build, and fail loudly if it cannot;
    - ``FLASHTS_BUILD_CUDA=0``: never build (pure-Python install).
  ``FLASHTS_CUDA_ARCHS`` (default ``"80;90"``) lists the SM architectures to compile for.

Install: ``pip install . --no-build-isolation`` (or ``-e .``): the build uses the torch already installed.
A plain ``pip install .`` builds in an isolated environment without torch: the extension is then skipped, with a
warning in the build output (``pip install -v .`` shows it) and the reason in ``flashts.backend_info()``.
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


def _warn(lines) -> None:
    """A banner on stderr (pip shows a build's output with -v, or when the build fails)."""
    bar = "!" * 100
    print("\n".join(["", bar] + [f"!! {line}" for line in lines] + [bar, ""]), file=sys.stderr, flush=True)


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
        _warn([
            "WARNING: flashts is built WITHOUT its CUDA extension flashts._C:",
            f"torch is not importable in this build environment ({type(exc).__name__}: {exc}).",
            "A plain `pip install .` builds in an isolated environment that has no torch. To build the extension",
            "against the torch you have, install with:  pip install . --no-build-isolation",
            "(FLASHTS_BUILD_CUDA=1 makes a missing torch or nvcc an error). The torch and triton backends work",
            "without it; flashts.backend_info()['cuda_ext_reason'] says why 'cuda' is unavailable.",
        ])
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

# name, version, dependencies, extras, ...: pyproject.toml's [project] table
setup(
    packages=find_packages(include=["flashts", "flashts.*"]) + ["flashts.kernels"],
    package_dir={"flashts.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
