"""Build the EMULATED ``flashts._C``: the real binding files of ``csrc/`` (``bindings.cpp``, ``*_bind.cpp``) compiled
against the installed CPU torch, linked with every kernel of ``csrc/*.cu`` compiled as host C++ under the CUDA
emulation harness (``ext_kernels.cpp``, ``cuda_host.h``). The result is a Python extension module with the same
functions and the same ``torch.ops.flashts_cuda`` ops as the GPU build, which takes CPU tensors and runs the kernels
on the host, one fiber per CUDA thread.

What it covers that the per-kernel emulation tests do not: the binding files (argument checks, workspace sizing,
stride and size marshalling, the launchers' error mapping, the TORCH_LIBRARY registrations) and the Python
``cuda`` backend on top of them (``flashts/cuda_ops``: output allocation, GQA sums, autograd), end to end through
the public ops. What it changes (``torch_shim/flashts_emu_torch.h``): CUDA streams, device guards and device
properties are stand-ins (the harness's device: 132 SMs, 227 KB of shared memory), ``is_cuda()`` reads
``is_cpu()``, and the CUDA dispatch key of the registrations is the CPU one.

    sys.path.insert(0, "tests/emulation"); import ext_build
    C = ext_build.load()          # the module; cached in $TMPDIR/flashts-emu/ext-<hash>/ (a few minutes to build)
    with ext_build.installed(C):  # flashts._C is C and backend="cuda" accepts CPU tensors, until the block ends
        flashts.linear_attention(q, k, v, backend="cuda")

Built with ``torch.utils.cpp_extension.load`` (ninja; the two cores of CI compile the five translation units
in parallel), under the file lock of ``emu_build`` so that pytest-xdist workers build it once.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import sys
import tempfile

import emu_build

EMU = emu_build.EMU
CSRC = emu_build.CSRC
SHIM = os.path.join(EMU, "torch_shim")
BIND_SOURCES = sorted(glob.glob(os.path.join(CSRC, "*.cpp")))
FLAGS = ["-O0", "-g0", "-w"]  # ext_kernels.cpp raises its own level to -O1 (#pragma GCC optimize)


def _key() -> str:
    import torch
    h = hashlib.sha256(torch.__version__.encode() + " ".join(FLAGS).encode())
    deps = BIND_SOURCES + [os.path.join(EMU, "ext_kernels.cpp"), os.path.join(EMU, "cuda_host.h")]
    deps += sorted(glob.glob(os.path.join(CSRC, "*.h")) + glob.glob(os.path.join(CSRC, "*.cuh"))
                   + glob.glob(os.path.join(CSRC, "*.cu")) + glob.glob(os.path.join(SHIM, "**", "*.h"), recursive=True))
    for p in deps:
        h.update(os.path.relpath(p, CSRC).encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


_LOADED: list = []


def load(verbose: bool = False):
    """The emulated extension module (built on first use, then cached). RuntimeError when it cannot be built."""
    if _LOADED:  # once per process (its TORCH_LIBRARY registrations run when the library is first loaded)
        return _LOADED[0]
    inc = emu_build.cuda_include()
    if emu_build.compiler() is None or inc is None:
        raise RuntimeError("no host C++ compiler or no CUDA headers (cuda_runtime_api.h)")
    from torch.utils import cpp_extension
    build_dir = os.path.join(tempfile.gettempdir(), "flashts-emu", f"ext-{_key()}")
    os.makedirs(build_dir, exist_ok=True)
    with open(os.path.join(os.path.dirname(build_dir), ".ext-lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        module = cpp_extension.load(
            name="_C", sources=BIND_SOURCES + [os.path.join(EMU, "ext_kernels.cpp")],
            extra_include_paths=[SHIM, CSRC, EMU, inc], extra_cflags=FLAGS, build_directory=build_dir,
            verbose=verbose)
    _LOADED.append(module)
    return module


@contextlib.contextmanager
def installed(module):
    """Within the block: ``import flashts._C`` gives ``module``, and ``backend="cuda"`` takes CPU tensors."""
    import torch

    import flashts
    from flashts import _backend
    saved_mod = sys.modules.get("flashts._C")
    saved_resolve, saved_ext = _backend.resolve, _backend.cuda_ext_available

    def resolve(op, backend, device, dtype=None):
        if isinstance(backend, str) and backend.lower() == "cuda" and device.type == "cpu":
            if "cuda" not in _backend._IMPLS.get(op, {}):
                return saved_resolve(op, backend, torch.device("cuda"), dtype)  # the usual "not implemented" error
            return "cuda"
        return saved_resolve(op, backend, device, dtype)

    sys.modules["flashts._C"] = module
    flashts._C = module
    _backend.resolve = resolve
    _backend.cuda_ext_available = lambda: True
    try:
        yield module
    finally:
        _backend.resolve, _backend.cuda_ext_available = saved_resolve, saved_ext
        if saved_mod is None:
            sys.modules.pop("flashts._C", None)
            if hasattr(flashts, "_C"):
                del flashts._C
        else:
            sys.modules["flashts._C"] = saved_mod
            flashts._C = saved_mod
