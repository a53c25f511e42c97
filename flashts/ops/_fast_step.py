"""The eager streaming step of the public functions: T = 1 on CPU with the ``torch`` backend, in O(1) Python.

A decoder calls ``op(q_t, k_t, v_t, initial_state=state, output_final_state=True)`` once per token. The general
path costs the full validation of :mod:`flashts._validate` (loops over dims, messages prepared, a ``Checked``
object) plus a ``torch.library`` custom-op dispatch with its autograd wrapper: 0.2–0.6 ms on a small CPU, more
than the step's arithmetic at small batches. Here each public function first asks :func:`linear`,
:func:`aaren` or :func:`latte` (a few attribute reads and tuple comparisons, no per-dim loop, no tensor
value read) whether the call is a plain valid CPU step; if so it runs the step function of
:mod:`flashts.torch_ops.step` directly — the same code the ``torch`` backend's forward runs for T = 1, as
ordinary differentiable PyTorch, so autograd needs no custom op. The step functions hold the running maxima
fixed in the backward (detached), which gives exactly the custom op's gradients, the running-max gradient of
a user-given ``m0`` included.

Anything else — a bad argument, a tensor subclass, another device or backend, autocast on, ``cu_seqlens``,
``torch.compile`` tracing (the callers test ``torch.compiler.is_compiling()`` first, so nothing here is traced:
the graph keeps the custom op, one node, and no guard on a size) — gets ``None`` back and takes the general
path, which validates fully and raises the documented errors. So the fast path accepts a subset of the valid
inputs and never has error messages of its own: every bad input gets exactly the general path's error.

``ENABLED = False`` switches it off (the tests compare both paths).
"""
from __future__ import annotations

import math

import torch

from .. import _backend
from ..torch_ops import step as _step

ENABLED = True

_Tensor = torch.Tensor
_PLAIN = (torch.Tensor, torch.nn.Parameter)   # no subclasses with their own dispatch (they take the general path)
_FEATURE_MAPS = ("elu", "relu", "identity")


def _eager_cpu_torch(op: str, backend) -> bool:
    """Autocast off on the CPU, and ``backend`` resolves to ``torch`` for CPU tensors."""
    if torch.is_autocast_enabled("cpu"):
        return False
    if backend == "torch":
        return True
    # "auto" on CPU tensors is the torch backend unless FLASHTS_BACKEND names another one (the general path
    # resolves that, and raises for a bad value)
    if backend != "auto":
        return False
    try:
        default = _backend.default_backend()
    except ValueError:   # a bad FLASHTS_BACKEND: the general path raises it
        return False
    return default in ("auto", "torch") and "torch" in _backend.implemented(op)


def _plain_cpu(x, dtype) -> bool:
    return type(x) in _PLAIN and x.is_cpu and x.dtype == dtype


def _finite_scale(scale) -> bool:
    return scale is None or (type(scale) is float and math.isfinite(scale))


def _state_ok(state, n: int, shapes, dtype_ok) -> bool:
    if type(state) not in (tuple, list) or len(state) != n:
        return False
    for part, shape in zip(state, shapes):
        if type(part) not in _PLAIN or not part.is_cpu or part.shape != shape or not dtype_ok(part.dtype):
            return False
    return True


def _float(dt) -> bool:
    return dt.is_floating_point


def linear(q, k, v, causal, feature_map, normalize, scale, eps, initial_state, output_final_state, cu_seqlens,
           backend):
    """The step of :func:`flashts.linear_attention`, or None (take the general path)."""
    if (not ENABLED or cu_seqlens is not None or causal is not True or type(q) not in _PLAIN or not q.is_cpu
            or not q.dtype.is_floating_point or q.dim() != 4 or q.shape[1] != 1):
        return None
    dt = q.dtype
    if not (_plain_cpu(k, dt) and _plain_cpu(v, dt) and k.dim() == 4 and v.dim() == 4):
        return None
    B, _, H, D = q.shape
    _, _, Hk, Dv = v.shape
    if (k.shape != (B, 1, Hk, D) or v.shape[:3] != (B, 1, Hk) or B < 1 or D < 1 or Dv < 1 or Hk < 1
            or H % Hk != 0):
        return None
    if (type(feature_map) is not str or feature_map not in _FEATURE_MAPS or type(normalize) is not bool
            or type(output_final_state) is not bool or not _finite_scale(scale)
            or type(eps) is not float or not 0.0 <= eps < math.inf):
        return None
    if initial_state is not None and not _state_ok(initial_state, 2, ((B, H, D, Dv), (B, H, D)), _float):
        return None
    if not _eager_cpu_torch("linear_attention", backend):
        return None
    if scale is None:
        scale = 1.0 if normalize else D ** -0.5
    st = None if initial_state is None else tuple(initial_state)
    o, st = _step.linear_step(q.select(1, 0), k.select(1, 0), v.select(1, 0), st,
                              feature_map=feature_map, normalize=normalize, scale=scale, eps=eps)
    o = o.unsqueeze(1)
    return (o, st) if output_final_state else o


def aaren(q, k, v, scale, initial_state, output_final_state, cu_seqlens, backend):
    """The step of :func:`flashts.aaren_attention`, or None (take the general path)."""
    if (not ENABLED or cu_seqlens is not None or type(k) not in _PLAIN or not k.is_cpu
            or not k.dtype.is_floating_point or k.dim() != 4 or k.shape[1] != 1):
        return None
    dt = k.dtype
    if not (_plain_cpu(q, dt) and _plain_cpu(v, dt) and v.dim() == 4):
        return None
    B, _, H, D = k.shape
    Dv = v.shape[3]
    qs = q.shape
    if (v.shape[:3] != (B, 1, H) or not (qs == (H, D) or qs == (B, H, D)) or B < 1 or H < 1 or D < 1
            or Dv < 1 or type(output_final_state) is not bool or not _finite_scale(scale)):
        return None
    if initial_state is not None and not _state_ok(initial_state, 3, ((B, H), (B, H), (B, H, Dv)), _float):
        return None
    if not _eager_cpu_torch("aaren_attention", backend):
        return None
    st = None if initial_state is None else tuple(initial_state)
    o, st = _step.aaren_step(q, k.select(1, 0), v.select(1, 0), st, scale=D ** -0.5 if scale is None else scale)
    o = o.unsqueeze(1)
    return (o, st) if output_final_state else o


def latte(q, k, v, causal, initial_state, output_final_state, cu_seqlens, backend):
    """The step of :func:`flashts.latte_attention` (causal), or None (take the general path)."""
    if (not ENABLED or cu_seqlens is not None or causal is not True or type(q) not in _PLAIN or not q.is_cpu
            or not q.dtype.is_floating_point or q.dim() != 4 or q.shape[1] != 1):
        return None
    dt = q.dtype
    if not (_plain_cpu(k, dt) and _plain_cpu(v, dt) and v.dim() == 4):
        return None
    B, _, H, L = q.shape
    Dv = v.shape[3]
    if (k.shape != q.shape or v.shape[:3] != (B, 1, H) or B < 1 or H < 1 or L < 1 or Dv < 1
            or type(output_final_state) is not bool):
        return None
    if initial_state is not None and not _state_ok(initial_state, 3, ((B, H, L), (B, H, L), (B, H, L, Dv)),
                                                   _float):
        return None
    if not _eager_cpu_torch("latte_attention", backend):
        return None
    st = None if initial_state is None else tuple(initial_state)
    o, st = _step.latte_step(q.select(1, 0), k.select(1, 0), v.select(1, 0), st)
    o = o.unsqueeze(1)
    return (o, st) if output_final_state else o
