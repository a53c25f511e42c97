"""Small helpers shared by the op modules (autocast, optional tensors, poisoned allocation, the guards every
custom op applies whatever the backend: checked and sanitised packed offsets, contiguous results)."""
from __future__ import annotations

import contextlib
import os

import torch

_EMPTY_SHAPE = (0,)


def autocast_dtype(device: torch.device):
    """The autocast dtype active for ``device``'s type, or None when autocast is off there."""
    dev = device.type
    if dev == "meta":  # meta tensors go straight to the fake implementations (shapes only)
        return None
    try:
        enabled = torch.is_autocast_enabled(dev)
    except TypeError:  # torch < 2.4: no device argument
        enabled = torch.is_autocast_cpu_enabled() if dev == "cpu" else torch.is_autocast_enabled()
    except RuntimeError:  # a device type autocast does not know
        return None
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(dev)
    except AttributeError:  # pragma: no cover - torch < 2.4
        return torch.get_autocast_cpu_dtype() if dev == "cpu" else torch.get_autocast_gpu_dtype()


def cast_for_autocast(*tensors):
    """Cast floating inputs to the autocast dtype, as a matmul under autocast would."""
    first = next(t for t in tensors if t is not None)
    dt = autocast_dtype(first.device)
    if dt is None:
        return tensors
    return tuple(t.to(dt) if t is not None and t.is_floating_point() and t.dtype != dt else t for t in tensors)


def no_autocast(device: torch.device):
    """Context that switches autocast off inside kernels (they accumulate in float32 themselves)."""
    if autocast_dtype(device) is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def opt(t, ref: torch.Tensor):
    """Optional tensor -> tensor (custom ops cannot return None): None becomes an empty tensor on ref's device."""
    return t if t is not None else ref.new_empty(_EMPTY_SHAPE)


def unopt(t):
    """Inverse of :func:`opt` for values coming back out of a custom op."""
    return None if t is None or (t.dim() == 1 and t.numel() == 0) else t


def poison_enabled() -> bool:
    return os.environ.get("FLASHTS_POISON", "0") not in ("", "0")


def new_empty(shape, *, dtype, device) -> torch.Tensor:
    """Allocate an output buffer. With ``FLASHTS_POISON=1`` (set by the tests) it is filled with NaN
    (integer buffers with -1), so any element a kernel forgets to write fails the comparison."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if poison_enabled():
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def state_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """States are float32, float64 when the inputs are float64 (torch backend)."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def compiles_for_gpu(device: torch.device) -> bool:
    """Whether Triton kernels for tensors on ``device`` are compiled for a GPU (else they run under the
    interpreter, which gets its own tiles and bf16 workarounds). The kernel modules ask through this function
    so that ``tests/triton_compile.py`` can record the GPU launch configurations on a machine without a GPU."""
    return device.type == "cuda"


def contiguous(*tensors):
    """What a custom op returns: each tensor contiguous, as its fake promises (``new_empty``), whatever strides
    the backend produced (e.g. gradients straight out of ``irfft`` or a transpose). Inductor checks the strides
    the fake promised; a mismatch fails the compiled backward."""
    return tuple(t.contiguous() for t in tensors)


def sanitise_offsets(cu: torch.Tensor, T: int) -> torch.Tensor:
    """A copy of ``cu_seqlens`` that every kernel can use safely whatever the values: clamped to [0, T], made
    non-decreasing, first entry 0 and last T. Every packed index a kernel derives from it then lies inside the
    real tensors (a valid packing is returned unchanged)."""
    c = torch.cummax(cu.clamp(0, T), dim=0).values
    ends = cu.new_tensor([0, T])
    return torch.cat([ends[:1], c[1:-1], ends[1:]]) if cu.numel() > 1 else ends[:1]


def packed_offsets(cu, T: int):
    """``cu_seqlens`` as a custom op hands it to a backend, eager or compiled (where validation cannot read values
    without a device sync). On CPU the values are checked (the same ``ValueError`` as the eager validation). On a
    GPU an asynchronous device-side assert fails loudly on invalid offsets, and the kernels run on the
    sanitised copy meanwhile, so they never read or write outside their buffers."""
    if cu is None:
        return None
    if cu.device.type == "cpu":
        from .. import _validate

        _validate.cu_seqlens_values(cu.tolist(), T)
        return cu
    bad = (cu[0] != 0) | (cu[-1] != T) | (cu[1:] < cu[:-1]).any()
    torch._assert_async(~bad, "flashts: invalid cu_seqlens (expected 0 = cu[0] <= cu[1] <= ... <= cu[-1] = T)")
    return sanitise_offsets(cu, T)


def empty_batch(x: torch.Tensor) -> bool:
    """B == 0 or T == 0 (dims 0 and 1 of ``[B, T, ...]``): the ops return empty results without a launch."""
    return x.shape[0] == 0 or x.shape[1] == 0
