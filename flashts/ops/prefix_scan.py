"""Prefix-scan attention (SPEC §4 Aaren, §5 Latte): public functions, custom ops (torch.compile), autograd.

Both carry the online-softmax state (max, Σe^{s-m}, Σe^{s-m}·v). Backends implement, in the module
registered for them::

    aaren_attention_fwd(q, k, v, m0, u0, w0, cu_seqlens, scale)
        -> (o [B,T,H,Dv] in k.dtype, m_T [N,H], u_T [N,H], w_T [N,H,Dv])
    aaren_attention_bwd(do, du_T, dw_T, q, k, v, o, m0, u0, w0, cu_seqlens, scale)
        -> (dq (shape of q), dk, dv, du0, dw0)          # du_T/dw_T may be None; du0/dw0 None without a state
    latte_attention_fwd(q, k, v, m0, a0, S0, cu_seqlens, causal)
        -> (o [B,T,H,Dv], m_T [N,H,L], a_T [N,H,L], S_T [N,H,L,Dv])   # states None when not causal
    latte_attention_bwd(do, da_T, dS_T, q, k, v, o, m0, a0, S0, cu_seqlens, causal)
        -> (dq, dk, dv, da0, dS0)

States are float32 (float64 for float64 inputs). The backends take gradients of u and w with m held fixed: the
state (m, u, w) stands for (u·e^m, w·e^m), so chained gradients stay exact, and the gradient of a user-given
running max follows from them here (ops layer, every backend): dm0 = u0·du0 + Σ_d w0·dw0 (Aaren), per latent
dm0 = α0·dα0 + Σ_d S0·dS0 (Latte). The final maxima are non-differentiable outputs.
All returned tensors are new.
"""
# no `from __future__ import annotations`: torch < 2.5's custom_op reads the annotations as objects, not strings

from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend, _validate
from . import _fast_step
from ._common import (cast_for_autocast, contiguous, empty_batch, no_autocast, opt, packed_offsets, state_dtype,
                      unopt)

AAREN = "aaren_attention"
LATTE = "latte_attention"
_backend.register(AAREN, "torch", "flashts.torch_ops.prefix_scan")
_backend.register(LATTE, "torch", "flashts.torch_ops.prefix_scan")
# "auto" on CUDA tensors: Latte → Triton (measured 14× faster than the CUDA backend on an H100, tests pass);
# Aaren → CUDA for now: its Triton kernels gave wrong results with Triton 3.6 on the H100 (fixed since by
# padding the latent block, verified only under the interpreter and offline compiles), while the CUDA
# backend passed every test there. Swap back once a GPU run confirms the Triton fix (tests/test_aaren.py).
_backend.register(AAREN, "cuda", "flashts.cuda_ops.prefix_scan", gpu_rank=1)
_backend.register(LATTE, "cuda", "flashts.cuda_ops.prefix_scan", gpu_rank=2)
_backend.register(AAREN, "triton", "flashts.kernels.prefix_scan", gpu_rank=2)
_backend.register(LATTE, "triton", "flashts.kernels.prefix_scan", gpu_rank=1)


# ----------------------------------------------------------------------------------------------- shared

def _pass_state(state0, lead: tuple, Dv: int, ref: Tensor):
    """Final state of an empty run: the initial state (copied), or the identity (−∞, 0, 0) without one."""
    sd = state_dtype(ref.dtype)
    m0, u0, w0 = state0
    if m0 is not None:
        return m0.to(sd, copy=True), u0.to(sd, copy=True), w0.to(sd, copy=True)
    return (ref.new_full(lead, float("-inf"), dtype=sd), ref.new_zeros(lead, dtype=sd),
            ref.new_zeros(lead + (Dv,), dtype=sd))


def _pass_grads(du, dw, u0, w0, ref):
    """Gradients of the initial state of an empty run: those of the final state, passed through."""
    if u0 is None:
        return ref.new_empty((0,)), ref.new_empty((0,))
    du0 = du.to(u0.dtype, copy=True) if du is not None else u0.new_zeros(u0.shape)
    dw0 = dw.to(w0.dtype, copy=True) if dw is not None else w0.new_zeros(w0.shape)
    return du0, dw0


def _running_max_grad(u0, du0, w0, dw0):
    """Exact gradient of a user-given running max m0: the output depends on (m0, u0, w0) only through
    (u0·e^{m0}, w0·e^{m0}), so dL/dm0 = u0·dL/du0 + Σ_d w0·dL/dw0 (None without a state)."""
    if u0 is None or du0 is None:
        return None
    return u0 * du0 + (w0 * dw0).sum(-1)


# ----------------------------------------------------------------------------------------------- Aaren

@torch.library.custom_op("flashts::aaren_attention_fwd", mutates_args=())
def _aaren_fwd(q: Tensor, k: Tensor, v: Tensor, m0: Optional[Tensor], u0: Optional[Tensor], w0: Optional[Tensor],
               cu_seqlens: Optional[Tensor], scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cu_seqlens = packed_offsets(cu_seqlens, k.shape[1])
    if empty_batch(k):  # B == 0 or T == 0: no launch; final state = initial state (the identity without)
        B, T, H, _ = k.shape
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        return (k.new_zeros((B, T, H, v.shape[-1])),) + _pass_state((m0, u0, w0), (N, H), v.shape[-1], k)
    impl = _backend.module_for(AAREN, backend)
    with no_autocast(k.device):
        return contiguous(*impl.aaren_attention_fwd(q, k, v, m0, u0, w0, cu_seqlens, scale))


@_aaren_fwd.register_fake
def _aaren_fwd_fake(q, k, v, m0, u0, w0, cu_seqlens, scale, backend):
    B, T, H, _ = k.shape
    Dv = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    sd = state_dtype(k.dtype)
    return (k.new_empty((B, T, H, Dv)), k.new_empty((N, H), dtype=sd), k.new_empty((N, H), dtype=sd),
            k.new_empty((N, H, Dv), dtype=sd))


@torch.library.custom_op("flashts::aaren_attention_bwd", mutates_args=())
def _aaren_bwd(do: Tensor, du: Optional[Tensor], dw: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, o: Tensor,
               m0: Optional[Tensor], u0: Optional[Tensor], w0: Optional[Tensor], cu_seqlens: Optional[Tensor],
               scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    cu_seqlens = packed_offsets(cu_seqlens, k.shape[1])
    if empty_batch(k):
        return (q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)) + _pass_grads(du, dw, u0, w0, q)
    impl = _backend.module_for(AAREN, backend)
    with no_autocast(k.device):
        dq, dk, dv, du0, dw0 = impl.aaren_attention_bwd(do, du, dw, q, k, v, o, m0, u0, w0, cu_seqlens, scale)
    return contiguous(dq, dk, dv, opt(du0, q), opt(dw0, q))


@_aaren_bwd.register_fake
def _aaren_bwd_fake(do, du, dw, q, k, v, o, m0, u0, w0, *args):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            u0.new_empty(u0.shape) if u0 is not None else q.new_empty((0,)),
            w0.new_empty(w0.shape) if w0 is not None else q.new_empty((0,)))


def _aaren_setup(ctx, inputs, output):
    q, k, v, m0, u0, w0, cu_seqlens = inputs[:7]
    ctx.params = inputs[7:]
    ctx.save_for_backward(q, k, v, output[0], m0, u0, w0, cu_seqlens)
    ctx.mark_non_differentiable(output[1])


def _aaren_backward(ctx, do, dm, du, dw):
    q, k, v, o, m0, u0, w0, cu_seqlens = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv, du0, dw0 = _aaren_bwd(do, du, dw, q, k, v, o, m0, u0, w0, cu_seqlens, *ctx.params)
    du0, dw0 = unopt(du0), unopt(dw0)
    dm0 = _running_max_grad(u0, du0, w0, dw0)
    return (dq, dk, dv, dm0, du0, dw0, None, None, None)


_aaren_fwd.register_autograd(_aaren_backward, setup_context=_aaren_setup)


def aaren_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: Optional[float] = None,
                    initial_state: Optional[tuple[Tensor, Tensor, Tensor]] = None, output_final_state: bool = False,
                    cu_seqlens: Optional[Tensor] = None, backend: str = "auto") -> Any:
    """Aaren ("Attention as an RNN"): one query per head, o_t = Σ_{i≤t} e^{s_i} v_i / Σ_{i≤t} e^{s_i}.

    Args:
        q: ``[H, D]`` (shared by the batch) or ``[B, H, D]``; k: ``[B, T, H, D]``; v: ``[B, T, H, Dv]``.
        scale: s_t = scale · (q · k_t), default ``D**-0.5``.
        initial_state: ``(m [N,H], u [N,H], w [N,H,Dv])`` float32: running max, Σe^{s-m}, Σe^{s-m}·v.
        output_final_state: also return the final state.
        cu_seqlens: int32 ``[N+1]`` offsets packing N sequences into ``B == 1``.

    Returns:
        ``o [B, T, H, Dv]``, or ``(o, (m, u, w))`` with ``output_final_state``.
    """
    if not torch.compiler.is_compiling():   # T = 1 on CPU, eager: the step in O(1) Python (None: general path)
        fast = _fast_step.aaren(q, k, v, scale, initial_state, output_final_state, cu_seqlens, backend)
        if fast is not None:
            return fast
    a = _validate.check_aaren(q, k, v, scale, initial_state, output_final_state, cu_seqlens)
    q, k, v = cast_for_autocast(q, k, v)
    be = _backend.resolve(AAREN, backend, a.device, k.dtype)
    _validate.backend_dtype(AAREN, be, k.dtype)
    m0, u0, w0 = a.initial_state if a.initial_state is not None else (None, None, None)
    o, m, u, w = _aaren_fwd(q, k, v, m0, u0, w0, cu_seqlens, a.scale, be)
    return (o, (m, u, w)) if output_final_state else o


# ----------------------------------------------------------------------------------------------- Latte

@torch.library.custom_op("flashts::latte_attention_fwd", mutates_args=())
def _latte_fwd(q: Tensor, k: Tensor, v: Tensor, m0: Optional[Tensor], a0: Optional[Tensor], S0: Optional[Tensor],
               cu_seqlens: Optional[Tensor], causal: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cu_seqlens = packed_offsets(cu_seqlens, q.shape[1])
    if empty_batch(q):  # B == 0 or T == 0: no launch; final state = initial state (the identity without)
        B, T, H, L = q.shape
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        o = q.new_zeros((B, T, H, v.shape[-1]))
        if not causal:
            return o, q.new_empty((0,)), q.new_empty((0,)), q.new_empty((0,))
        return (o,) + _pass_state((m0, a0, S0), (N, H, L), v.shape[-1], q)
    impl = _backend.module_for(LATTE, backend)
    with no_autocast(q.device):
        o, m, a, S = impl.latte_attention_fwd(q, k, v, m0, a0, S0, cu_seqlens, causal)
    return contiguous(o, opt(m, q), opt(a, q), opt(S, q))


@_latte_fwd.register_fake
def _latte_fwd_fake(q, k, v, m0, a0, S0, cu_seqlens, causal, backend):
    B, T, H, L = q.shape
    Dv = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    sd = state_dtype(q.dtype)
    o = q.new_empty((B, T, H, Dv))
    if not causal:
        return o, q.new_empty((0,)), q.new_empty((0,)), q.new_empty((0,))
    return (o, q.new_empty((N, H, L), dtype=sd), q.new_empty((N, H, L), dtype=sd),
            q.new_empty((N, H, L, Dv), dtype=sd))


@torch.library.custom_op("flashts::latte_attention_bwd", mutates_args=())
def _latte_bwd(do: Tensor, da: Optional[Tensor], dS: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, o: Tensor,
               m0: Optional[Tensor], a0: Optional[Tensor], S0: Optional[Tensor], cu_seqlens: Optional[Tensor],
               causal: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    cu_seqlens = packed_offsets(cu_seqlens, q.shape[1])
    if empty_batch(q):
        return (q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape)) + _pass_grads(da, dS, a0, S0, q)
    impl = _backend.module_for(LATTE, backend)
    with no_autocast(q.device):
        dq, dk, dv, da0, dS0 = impl.latte_attention_bwd(do, da, dS, q, k, v, o, m0, a0, S0, cu_seqlens, causal)
    return contiguous(dq, dk, dv, opt(da0, q), opt(dS0, q))


@_latte_bwd.register_fake
def _latte_bwd_fake(do, da, dS, q, k, v, o, m0, a0, S0, *args):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            a0.new_empty(a0.shape) if a0 is not None else q.new_empty((0,)),
            S0.new_empty(S0.shape) if S0 is not None else q.new_empty((0,)))


def _latte_setup(ctx, inputs, output):
    q, k, v, m0, a0, S0, cu_seqlens = inputs[:7]
    ctx.params = inputs[7:]
    ctx.save_for_backward(q, k, v, output[0], m0, a0, S0, cu_seqlens)
    ctx.mark_non_differentiable(output[1])


def _latte_backward(ctx, do, dm, da, dS):
    q, k, v, o, m0, a0, S0, cu_seqlens = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    da, dS = unopt(da), unopt(dS)
    dq, dk, dv, da0, dS0 = _latte_bwd(do, da, dS, q, k, v, o, m0, a0, S0, cu_seqlens, *ctx.params)
    da0, dS0 = unopt(da0), unopt(dS0)
    dm0 = _running_max_grad(a0, da0, S0, dS0)
    return (dq, dk, dv, dm0, da0, dS0, None, None, None)


_latte_fwd.register_autograd(_latte_backward, setup_context=_latte_setup)


def latte_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
                    initial_state: Optional[tuple[Tensor, Tensor, Tensor]] = None, output_final_state: bool = False,
                    cu_seqlens: Optional[Tensor] = None, backend: str = "auto") -> Any:
    """Latte (latent attention): y_t = Σ_l softmax_l(q_t) · (softmax over s of k_{s,l})-weighted mean of v_s.

    Args:
        q, k: latent logits ``[B, T, H, L]``; v: ``[B, T, H, Dv]``.
        causal: the per-latent mean runs over s ≤ t (a prefix scan) when True, over all s otherwise.
        initial_state: ``(m [N,H,L], alpha [N,H,L], S [N,H,L,Dv])`` float32, causal only.
        output_final_state: also return the final state (causal only).
        cu_seqlens: int32 ``[N+1]`` offsets packing N sequences into ``B == 1``.

    Returns:
        ``o [B, T, H, Dv]``, or ``(o, (m, alpha, S))`` with ``output_final_state``.
    """
    if not torch.compiler.is_compiling():   # T = 1 on CPU, eager: the step in O(1) Python (None: general path)
        fast = _fast_step.latte(q, k, v, causal, initial_state, output_final_state, cu_seqlens, backend)
        if fast is not None:
            return fast
    a = _validate.check_latte(q, k, v, causal, initial_state, output_final_state, cu_seqlens)
    q, k, v = cast_for_autocast(q, k, v)
    be = _backend.resolve(LATTE, backend, a.device, q.dtype)
    _validate.backend_dtype(LATTE, be, q.dtype)
    m0, a0, S0 = a.initial_state if a.initial_state is not None else (None, None, None)
    o, m, al, S = _latte_fwd(q, k, v, m0, a0, S0, cu_seqlens, causal, be)
    return (o, (m, al, S)) if output_final_state else o
