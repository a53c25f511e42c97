"""Build and load a CUDA source as a host shared library for the CUDA emulation harness (``cuda_host.h``).

Used by ``tests/test_cuda_emulation.py``; other test files can use it the same way::

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "emulation"))
    import emu_build
    lib = emu_build.load({"mine": os.path.join(emu_build.EMU, "mine_host.cpp")})["mine"]
    rc = lib.emu_my_launcher(ctypes.c_void_p(x.data_ptr()), ...)   # 0, or a cudaError_t with
    msg = emu_build.last_error(lib)                                  # the harness's message

``mine_host.cpp`` includes ``cuda_host.h`` and then the ``.cu`` file, and defines ``extern "C"`` wrappers with
default visibility around the launchers. Libraries are cached in ``$TMPDIR/flashts-emu/<name>-<hash>.so`` by a
hash of the compiler, the flags and the sources they can include (the wrapper, ``cuda_host.h``, every
``csrc/*.h``/``*.cuh`` and the ``csrc/*.cu`` files the wrapper names), built in parallel and under a file lock
(pytest-xdist workers share the cache).
"""
from __future__ import annotations

import ctypes
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import tempfile

EMU = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(EMU))
CSRC = os.path.join(ROOT, "csrc")
FLAGS = ["-x", "c++", "-std=c++17", "-O1", "-g0", "-shared", "-fPIC", "-fvisibility=hidden", "-Wl,-Bsymbolic",
         "-DFLASHTS_HOST_EMU", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable"]


def cuda_include() -> str | None:
    """A directory with cuda_runtime_api.h, cuda_fp16.h, cuda_bf16.h: the CUDA toolkit's, else Triton's copy."""
    cands = []
    if os.environ.get("CUDA_HOME"):
        cands.append(os.path.join(os.environ["CUDA_HOME"], "include"))
    cands += ["/usr/local/cuda/include"] + sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    try:
        import triton
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "include"))
    except ImportError:
        pass
    for d in cands:
        if all(os.path.isfile(os.path.join(d, h)) for h in ("cuda_runtime_api.h", "cuda_fp16.h", "cuda_bf16.h",
                                                            "vector_functions.h")):
            return d
    return None


def compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")


def _key(cxx: str, inc: str, src: str) -> str:
    h = hashlib.sha256()
    h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    h.update(" ".join(FLAGS + [inc]).encode())
    with open(src, "rb") as f:
        text = f.read()
    deps = [os.path.join(EMU, "cuda_host.h")]
    deps += sorted(glob.glob(os.path.join(CSRC, "*.h")) + glob.glob(os.path.join(CSRC, "*.cuh")))
    deps += [p for p in sorted(glob.glob(os.path.join(CSRC, "*.cu"))) if os.path.basename(p).encode() in text]
    h.update(text)
    for p in deps:
        h.update(p.encode())
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def load(sources: dict[str, str]) -> dict[str, ctypes.CDLL]:
    """name -> source (a .cpp wrapper or a .cu, compiled as C++ with cuda_host.h first); returns name -> CDLL.
    Raises RuntimeError when no compiler or no CUDA headers are found, or when a build fails (with its log)."""
    cxx, inc = compiler(), cuda_include()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++) found")
    if inc is None:
        raise RuntimeError("no CUDA headers (cuda_fp16.h): neither a CUDA toolkit nor Triton's bundled copy")
    out_dir = os.path.join(tempfile.gettempdir(), "flashts-emu")
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}-{_key(cxx, inc, src)}.so") for name, src in sources.items()}
    with open(os.path.join(out_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others then find the libraries
        procs = []
        for name, src in sources.items():
            so = paths[name]
            if os.path.exists(so):
                continue
            tmp = f"{so}.tmp{os.getpid()}"
            cmd = [cxx, *FLAGS, "-include", os.path.join(EMU, "cuda_host.h"), f"-I{inc}", f"-I{CSRC}", f"-I{EMU}",
                   src, "-o", tmp]
            procs.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                          tmp, so))
        errors = []
        for name, p, tmp, so in procs:
            log = p.communicate()[0]
            if p.returncode != 0:
                errors.append(f"building the emulation of {name} failed:\n{log[-6000:]}")
            else:
                os.replace(tmp, so)
        if errors:
            raise RuntimeError("\n".join(errors))
    libs = {}
    for name, so in paths.items():
        lib = ctypes.CDLL(so)
        lib.flashts_emu_last_error.restype = ctypes.c_char_p
        libs[name] = lib
    return libs


def last_error(lib: ctypes.CDLL) -> str:
    """The harness's message about the last failed launch of `lib` ("" if none)."""
    return lib.flashts_emu_last_error().decode()
