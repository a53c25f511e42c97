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
import os

import torch

from .. import _backend
from ..torch_ops import step as _step

ENABLED = True

_PLAIN = (torch.Tensor, torch.nn.Parameter)   # no subclasses with their own dispatch (they take the general path)
_SEQ = (tuple, list)
_FEATURE_MAPS = ("elu", "relu", "identity")
_TORCH_DEFAULTS = ("", "auto", "torch")


def _torch_backend(backend) -> bool:
    """``backend`` resolves to ``torch`` for CPU tensors, and autocast is off on the CPU. ``"auto"`` does unless
    FLASHTS_BACKEND names another backend (the general path resolves that, and raises for a bad value)."""
    if backend != "torch":
        if backend != "auto":
            return False
        env = os.environ.get(_backend.ENV_VAR)
        if env is not None and env.strip().lower() not in _TORCH_DEFAULTS:
            return False
    return not torch.is_autocast_enabled("cpu")


def _plain_cpu3(q, k, v) -> bool:
    """q, k, v plain tensors on the CPU with one floating dtype."""
    dt = k.dtype
    return (type(q) in _PLAIN and type(k) in _PLAIN and type(v) in _PLAIN and k.is_cpu and q.is_cpu and v.is_cpu
            and q.dtype == dt and v.dtype == dt and dt.is_floating_point)


def _finite_scale(scale) -> bool:
    return scale is None or (type(scale) is float and math.isfinite(scale))


def _state_ok(state, shapes) -> bool:
    """``state``: a tuple/list of plain floating CPU tensors of exactly ``shapes``."""
    if type(state) not in _SEQ or len(state) != len(shapes):
        return False
    for part, shape in zip(state, shapes):
        if type(part) not in _PLAIN or not part.is_cpu or part.shape != shape or not part.dtype.is_floating_point:
            return False
    return True


def linear(q, k, v, causal, feature_map, normalize, scale, eps, initial_state, output_final_state, cu_seqlens,
           backend):
    """The step of :func:`flashts.linear_attention`, or None (take the general path)."""
    if not ENABLED or cu_seqlens is not None or causal is not True or not _plain_cpu3(q, k, v):
        return None
    qs, ks, vs = q.shape, k.shape, v.shape
    if len(qs) != 4 or qs[1] != 1 or len(ks) != 4 or len(vs) != 4:
        return None
    B, _, H, D = qs
    Hk, Dv = vs[2], vs[3]
    if (ks != (B, 1, Hk, D) or vs[:3] != (B, 1, Hk) or B < 1 or D < 1 or Dv < 1 or Hk < 1 or H % Hk != 0
            or type(feature_map) is not str or feature_map not in _FEATURE_MAPS or type(normalize) is not bool
            or type(output_final_state) is not bool or not _finite_scale(scale)
            or type(eps) is not float or not 0.0 <= eps < math.inf):
        return None
    if initial_state is not None and not _state_ok(initial_state, ((B, H, D, Dv), (B, H, D))):
        return None
    if not _torch_backend(backend):
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
    if not ENABLED or cu_seqlens is not None or not _plain_cpu3(q, k, v):
        return None
    qs, ks, vs = q.shape, k.shape, v.shape
    if len(ks) != 4 or ks[1] != 1 or len(vs) != 4:
        return None
    B, _, H, D = ks
    Dv = vs[3]
    if (vs[:3] != (B, 1, H) or not (qs == (H, D) or qs == (B, H, D)) or B < 1 or H < 1 or D < 1
            or Dv < 1 or type(output_final_state) is not bool or not _finite_scale(scale)):
        return None
    if initial_state is not None and not _state_ok(initial_state, ((B, H), (B, H), (B, H, Dv))):
        return None
    if not _torch_backend(backend):
        return None
    st = None if initial_state is None else tuple(initial_state)
    o, st = _step.aaren_step(q, k.select(1, 0), v.select(1, 0), st, scale=D ** -0.5 if scale is None else scale)
    o = o.unsqueeze(1)
    return (o, st) if output_final_state else o


def latte(q, k, v, causal, initial_state, output_final_state, cu_seqlens, backend):
    """The step of :func:`flashts.latte_attention` (causal), or None (take the general path)."""
    if not ENABLED or cu_seqlens is not None or causal is not True or not _plain_cpu3(q, k, v):
        return None
    qs, vs = q.shape, v.shape
    if len(qs) != 4 or qs[1] != 1 or len(vs) != 4:
        return None
    B, _, H, L = qs
    Dv = vs[3]
    if (k.shape != qs or vs[:3] != (B, 1, H) or B < 1 or H < 1 or L < 1 or Dv < 1
            or type(output_final_state) is not bool):
        return None
    if initial_state is not None and not _state_ok(initial_state, ((B, H, L), (B, H, L), (B, H, L, Dv))):
        return None
    if not _torch_backend(backend):
        return None
    st = None if initial_state is None else tuple(initial_state)
    o, st = _step.latte_step(q.select(1, 0), k.select(1, 0), v.select(1, 0), st)
    o = o.unsqueeze(1)
    return (o, st) if output_final_state else o


_INT_DTYPES = (torch.int32, torch.int64)


def macchiato(q, k, v, mix, latent_k, window, scale, initial_state, output_final_state, cu_seqlens, backend):
    """The step of :func:`flashts.latte_macchiato_attention` with a state, or None (take the general path).
    Besides shapes it reads two numbers, the range of ``n_win`` (the general path checks it too; on the CPU a
    read, not a device sync)."""
    if (not ENABLED or cu_seqlens is not None or initial_state is None or not _plain_cpu3(q, k, v)
            or not _plain_cpu3(mix, latent_k, k) or type(window) not in _SEQ or len(window) != 2):
        return None
    left, right = window
    if type(left) is not int or type(right) is not int or right != 0 or left < 0:
        return None
    qs, vs, ms, ls = q.shape, v.shape, mix.shape, latent_k.shape
    if len(qs) != 4 or qs[1] != 1 or len(vs) != 4 or len(ls) != 4:
        return None
    B, _, H, D = qs
    Dv, L = vs[3], ls[3]
    if (k.shape != qs or vs[:3] != (B, 1, H) or ls[:3] != (B, 1, H) or ms != (B, 1, H, L + 1) or B < 1 or H < 1
            or D < 1 or Dv < 1 or L < 1 or type(output_final_state) is not bool or not _finite_scale(scale)):
        return None
    if type(initial_state) not in _SEQ or len(initial_state) != 6:
        return None
    n_win = initial_state[2]
    W = left
    if (type(n_win) not in _PLAIN or not n_win.is_cpu or n_win.dtype not in _INT_DTYPES or n_win.shape != (B,)
            or not _state_ok(tuple(initial_state[i] for i in (0, 1, 3, 4, 5)),
                             ((B, W, H, D), (B, W, H, Dv), (B, H, L), (B, H, L), (B, H, L, Dv)))):
        return None
    if not _torch_backend(backend):
        return None
    lo, hi = torch.aminmax(n_win)
    if lo < 0 or hi > W:   # the general path raises its error
        return None
    o, st = _step.macchiato_step(q.select(1, 0), k.select(1, 0), v.select(1, 0), mix.select(1, 0),
                                 latent_k.select(1, 0), tuple(initial_state), left=W,
                                 scale=D ** -0.5 if scale is None else scale)
    o = o.unsqueeze(1)
    return (o, st) if output_final_state else o
