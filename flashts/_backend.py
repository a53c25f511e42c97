"""Backend availability and choice.

Every public op calls :func:`resolve` once, after validation, to turn the
user's ``backend=`` argument into one of ``"torch" | "triton" | "cuda"``.

* ``"auto"`` (the default) means: the value of ``FLASHTS_BACKEND`` when it is
  set to something other than ``"auto"``; otherwise, for CUDA tensors the
  fastest GPU backend that implements the op and is available here
  (``GPU_PREFERENCE`` per op), and for CPU tensors ``"torch"``.
* An unknown name is a ``ValueError``; a known backend that cannot run here is a
  ``RuntimeError`` that says how to get it.

Which backends implement which op is declared by the op modules through
:func:`register`, so a kernel issue adds a backend with one line.
"""
from __future__ import annotations

import importlib
import os

import torch

BACKENDS = ("auto", "triton", "cuda", "torch")
ENV_VAR = "FLASHTS_BACKEND"

# op name -> {backend name -> module path holding `<op>_fwd` / `<op>_bwd`}
_IMPLS: dict[str, dict[str, str]] = {}
# op name -> {GPU backend -> rank}; "auto" on CUDA tensors tries lower ranks first
_GPU_RANK: dict[str, dict[str, int]] = {}

BUILD_HINT = (
    "build the CUDA extension with `FLASHTS_BUILD_CUDA=1 pip install -e . --no-build-isolation` "
    "on a machine with a CUDA build of PyTorch and nvcc"
)


def register(op: str, backend: str, module: str, gpu_rank: int | None = None) -> None:
    """Declare that ``module`` implements ``op`` for ``backend``.

    ``gpu_rank`` orders GPU backends for ``"auto"`` (lower is tried first).
    """
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"cannot register backend {backend!r}")
    _IMPLS.setdefault(op, {})[backend] = module
    if gpu_rank is not None:
        _GPU_RANK.setdefault(op, {})[backend] = gpu_rank


def implemented(op: str) -> tuple[str, ...]:
    return tuple(_IMPLS.get(op, {}))


def _getenv(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _probe_triton() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def _probe_cuda_ext() -> bool:
    try:
        importlib.import_module("flashts._C")
    except Exception:
        return False
    return True


# torch.compile must not trace the import (a graph break under fullgraph=True) nor the environment lookups
# (torch < 2.5 fails to trace os.environ.get of an unset variable): both run eagerly at trace time and their
# results are baked into the graph (so a compiled function keeps the backend it was traced with).
_assume_constant = getattr(getattr(torch, "compiler", None), "assume_constant_result", None)
if _assume_constant is not None:
    _probe_cuda_ext = _assume_constant(_probe_cuda_ext)
    _probe_triton = _assume_constant(_probe_triton)
    _getenv = _assume_constant(_getenv)


def triton_interpreter() -> bool:
    return _getenv("TRITON_INTERPRET", "0") not in ("", "0")
_CUDA_EXT: list = []
_TRITON: list = []


def triton_available() -> bool:
    """Whether ``triton`` imports (probed once)."""
    if not _TRITON:
        _TRITON.append(_probe_triton())
    return _TRITON[0]


def cuda_ext_available() -> bool:
    """Whether the compiled extension ``flashts._C`` imports (probed once)."""
    if not _CUDA_EXT:
        _CUDA_EXT.append(_probe_cuda_ext())
    return _CUDA_EXT[0]


def available(backend: str, device: torch.device | None = None) -> bool:
    """Whether ``backend`` can run on tensors of ``device`` here."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    if backend == "torch":
        return True
    if backend == "triton":
        return triton_available() and (dev.type == "cuda" or (dev.type == "cpu" and triton_interpreter()))
    if backend == "cuda":
        return dev.type == "cuda" and cuda_ext_available()
    return False


def default_backend() -> str:
    name = _getenv(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR}: expected one of {BACKENDS}, got {name!r}")
    return name


def resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """Map the user's ``backend`` for ``op`` on tensors of ``device`` to a concrete backend.

    ``"auto"`` never picks a GPU backend for float64 inputs (only the torch backend takes them).
    """
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    backend = backend.lower()
    if backend == "auto":
        backend = default_backend()
    impls = _IMPLS.get(op, {})
    if backend == "auto":
        if device.type == "cuda":
            ranks = _GPU_RANK.get(op, {})
            for cand in sorted(ranks, key=ranks.get):
                if cand in impls and available(cand, device):
                    return cand
        return "torch"
    if backend not in impls:
        raise RuntimeError(
            f"{op}: backend {backend!r} is not implemented for this op yet "
            f"(implemented: {sorted(impls)}); use backend='torch' or 'auto'"
        )
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{op}: backend 'triton' needs the `triton` package: pip install triton")
        if device.type != "cuda" and not (device.type == "cpu" and triton_interpreter()):
            raise RuntimeError(
                f"{op}: backend 'triton' needs CUDA tensors (got {device.type}); for CPU tensors set "
                "TRITON_INTERPRET=1 before importing triton (slow, meant for tests)"
            )
    elif backend == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"{op}: backend 'cuda' needs CUDA tensors (got {device.type})")
        if not cuda_ext_available():
            raise RuntimeError(f"{op}: backend 'cuda' needs the compiled extension flashts._C; {BUILD_HINT}")
    return backend


def module_for(op: str, backend: str):
    """Import (lazily) the module implementing ``op`` for ``backend``."""
    return importlib.import_module(_IMPLS[op][backend])


def unavailable_reason(backend: str, device: torch.device | None = None) -> str | None:
    """None when ``backend`` can run on tensors of ``device`` (default: the GPU if any, else the CPU), else why not."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if available(backend, device):
        return None
    if backend == "triton":
        if not triton_available():
            return "the `triton` package is not installed (pip install triton)"
        return "no CUDA device (CPU tensors run Triton only under TRITON_INTERPRET=1, for tests)"
    if backend == "cuda":
        if not cuda_ext_available():
            try:
                importlib.import_module("flashts._C")
            except ModuleNotFoundError:
                why = ("flashts._C was not built (a plain `pip install .` builds in an isolated environment without "
                       "torch and skips it; so does a CPU-only torch or a missing nvcc)")
            except Exception as exc:  # built, but it does not load (e.g. built against another torch)
                why = f"flashts._C does not load ({type(exc).__name__}: {exc})"
            else:  # pragma: no cover - loads now
                why = "flashts._C did not load earlier in this process"
            return f"{why}; {BUILD_HINT}"
        return f"no CUDA device (the extension is built, for CUDA tensors only; torch CUDA {torch.version.cuda})"
    return f"unknown backend {backend!r}"


def _short_reason(reason: str) -> str:
    return reason.split(" (")[0].split(";")[0]


def info() -> dict:
    """What is available on this machine (for bug reports and the README).

    ``ops`` maps each op to ``{backend: "available" | "unavailable: <why>"}`` for this machine's default device
    (the GPU if there is one); ``cuda_ext_reason`` says why the ``cuda`` backend cannot run (None when it can).
    """
    reasons = {b: unavailable_reason(b) for b in ("torch", "triton", "cuda")}
    return {
        "torch": torch.__version__,
        "triton": triton_available(),
        "triton_interpreter": triton_interpreter(),
        "cuda_ext": cuda_ext_available(),
        "cuda_ext_reason": reasons["cuda"],
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "ops": {op: {b: "available" if reasons[b] is None else "unavailable: " + _short_reason(reasons[b])
                     for b in sorted(impls)} for op, impls in _IMPLS.items()},
    }
