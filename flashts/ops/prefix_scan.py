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

States are float32 (float64 for float64 inputs). Maxima carry no gradient: the state (m, u, w) stands for
(u·e^m, w·e^m), so gradients of u and w are taken with m held fixed and chained gradients stay exact.
All returned tensors are new.
"""
# no `from __future__ import annotations`: torch < 2.5's custom_op reads the annotations as objects, not strings

from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend, _validate
from ._common import cast_for_autocast, no_autocast, opt, state_dtype, unopt

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


# ----------------------------------------------------------------------------------------------- Aaren

@torch.library.custom_op("flashts::aaren_attention_fwd", mutates_args=())
def _aaren_fwd(q: Tensor, k: Tensor, v: Tensor, m0: Optional[Tensor], u0: Optional[Tensor], w0: Optional[Tensor],
               cu_seqlens: Optional[Tensor], scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    impl = _backend.module_for(AAREN, backend)
    with no_autocast(k.device):
        return impl.aaren_attention_fwd(q, k, v, m0, u0, w0, cu_seqlens, scale)


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
    impl = _backend.module_for(AAREN, backend)
    with no_autocast(k.device):
        dq, dk, dv, du0, dw0 = impl.aaren_attention_bwd(do, du, dw, q, k, v, o, m0, u0, w0, cu_seqlens, scale)
    return dq, dk, dv, opt(du0, q), opt(dw0, q)


@_aaren_bwd.register_fake
def _aaren_bwd_fake(do, du, dw, q, k, v, o, m0, u0, w0, *args):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(u0) if u0 is not None else q.new_empty((0,)),
            torch.empty_like(w0) if w0 is not None else q.new_empty((0,)))


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
    return (dq, dk, dv, None, unopt(du0), unopt(dw0), None, None, None)


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
    impl = _backend.module_for(LATTE, backend)
    with no_autocast(q.device):
        o, m, a, S = impl.latte_attention_fwd(q, k, v, m0, a0, S0, cu_seqlens, causal)
    return o, opt(m, q), opt(a, q), opt(S, q)


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
    impl = _backend.module_for(LATTE, backend)
    with no_autocast(q.device):
        dq, dk, dv, da0, dS0 = impl.latte_attention_bwd(do, da, dS, q, k, v, o, m0, a0, S0, cu_seqlens, causal)
    return dq, dk, dv, opt(da0, q), opt(dS0, q)


@_latte_bwd.register_fake
def _latte_bwd_fake(do, da, dS, q, k, v, o, m0, a0, S0, *args):
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            torch.empty_like(a0) if a0 is not None else q.new_empty((0,)),
            torch.empty_like(S0) if S0 is not None else q.new_empty((0,)))


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
    return (dq, dk, dv, None, unopt(da0), unopt(dS0), None, None, None)


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
    a = _validate.check_latte(q, k, v, causal, initial_state, output_final_state, cu_seqlens)
    q, k, v = cast_for_autocast(q, k, v)
    be = _backend.resolve(LATTE, backend, a.device, q.dtype)
    _validate.backend_dtype(LATTE, be, q.dtype)
    m0, a0, S0 = a.initial_state if a.initial_state is not None else (None, None, None)
    o, m, al, S = _latte_fwd(q, k, v, m0, a0, S0, cu_seqlens, causal, be)
    return (o, (m, al, S)) if output_final_state else o
