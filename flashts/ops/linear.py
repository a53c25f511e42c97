"""Linear attention (SPEC §1): public function, custom op (torch.compile) and autograd.

Backends implement, in the module registered for them::

    linear_attention_fwd(q, k, v, S0, z0, cu_seqlens, causal, feature_map, normalize, scale, eps)
        -> (o [B,T,H,Dv] in q.dtype, S_T [N,H,D,Dv], z_T [N,H,D])      # states float32 (float64 for float64 inputs)
    linear_attention_bwd(do, dS_T, dz_T, q, k, v, o, S0, z0, cu_seqlens, causal, feature_map, normalize, scale, eps)
        -> (dq, dk, dv, dS0, dz0)       # dS_T/dz_T may be None; dS0/dz0 None when S0 is None

All returned tensors are new (never an input or a view of one).
"""
# no `from __future__ import annotations`: torch < 2.5's custom_op reads the annotations as objects, not strings

from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend, _validate
from . import _fast_step
from ._common import cast_for_autocast, contiguous, empty_batch, no_autocast, opt, packed_offsets, state_dtype, unopt

OP = "linear_attention"
_backend.register(OP, "torch", "flashts.torch_ops.linear")
_backend.register(OP, "triton", "flashts.kernels.linear_attention", gpu_rank=1)
_backend.register(OP, "cuda", "flashts.cuda_ops.linear", gpu_rank=2)


@torch.library.custom_op("flashts::linear_attention_fwd", mutates_args=())
def _fwd(q: Tensor, k: Tensor, v: Tensor, S0: Optional[Tensor], z0: Optional[Tensor], cu_seqlens: Optional[Tensor],
         causal: bool, feature_map: str, normalize: bool, scale: float, eps: float,
         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    cu_seqlens = packed_offsets(cu_seqlens, q.shape[1])
    if empty_batch(q):  # B == 0 or T == 0: no launch; final states = initial states (zeros without)
        B, T, H, D = q.shape
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        sd = state_dtype(q.dtype)
        S = S0.to(sd, copy=True) if S0 is not None else q.new_zeros((N, H, D, v.shape[-1]), dtype=sd)
        z = z0.to(sd, copy=True) if z0 is not None else q.new_zeros((N, H, D), dtype=sd)
        return q.new_zeros((B, T, H, v.shape[-1])), S, z
    impl = _backend.module_for(OP, backend)
    with no_autocast(q.device):
        return contiguous(*impl.linear_attention_fwd(q, k, v, S0, z0, cu_seqlens, causal, feature_map, normalize,
                                                     scale, eps))


@_fwd.register_fake
def _fwd_fake(q, k, v, S0, z0, cu_seqlens, causal, feature_map, normalize, scale, eps, backend):
    B, T, H, D = q.shape
    Dv = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    sd = state_dtype(q.dtype)
    return q.new_empty((B, T, H, Dv)), q.new_empty((N, H, D, Dv), dtype=sd), q.new_empty((N, H, D), dtype=sd)


@torch.library.custom_op("flashts::linear_attention_bwd", mutates_args=())
def _bwd(do: Tensor, dS: Optional[Tensor], dz: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, o: Tensor,
         S0: Optional[Tensor], z0: Optional[Tensor], cu_seqlens: Optional[Tensor], causal: bool, feature_map: str,
         normalize: bool, scale: float, eps: float, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    cu_seqlens = packed_offsets(cu_seqlens, q.shape[1])
    if empty_batch(q):  # the final states are the initial ones: their gradients pass straight through
        dS0 = dz0 = None
        if S0 is not None:
            dS0 = dS.to(S0.dtype, copy=True) if dS is not None else torch.zeros_like(S0)
            dz0 = dz.to(z0.dtype, copy=True) if dz is not None else torch.zeros_like(z0)
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape), opt(dS0, q), opt(dz0, q)
    impl = _backend.module_for(OP, backend)
    with no_autocast(q.device):
        dq, dk, dv, dS0, dz0 = impl.linear_attention_bwd(do, dS, dz, q, k, v, o, S0, z0, cu_seqlens, causal,
                                                         feature_map, normalize, scale, eps)
    return contiguous(dq, dk, dv, opt(dS0, q), opt(dz0, q))


@_bwd.register_fake
def _bwd_fake(do, dS, dz, q, k, v, o, S0, z0, *args):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            S0.new_empty(S0.shape) if S0 is not None else q.new_empty((0,)),
            z0.new_empty(z0.shape) if z0 is not None else q.new_empty((0,)))


def _setup(ctx, inputs, output):
    q, k, v, S0, z0, cu_seqlens = inputs[:6]
    ctx.params = inputs[6:]
    ctx.save_for_backward(q, k, v, output[0], S0, z0, cu_seqlens)


def _backward(ctx, do, dS, dz):
    q, k, v, o, S0, z0, cu_seqlens = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv, dS0, dz0 = _bwd(do, dS, dz, q, k, v, o, S0, z0, cu_seqlens, *ctx.params)
    return (dq, dk, dv, unopt(dS0), unopt(dz0)) + (None,) * 7


_fwd.register_autograd(_backward, setup_context=_setup)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, feature_map: str = "elu",
                     normalize: bool = True, scale: Optional[float] = None, eps: float = 1e-6,
                     initial_state: Optional[tuple[Tensor, Tensor]] = None, output_final_state: bool = False,
                     cu_seqlens: Optional[Tensor] = None, backend: str = "auto") -> Any:
    """Linear attention o_t = q̃_tᵀ S_t / (q̃_t·z_t + eps) with S_t = S_0 + Σ_{s∈A(t)} φ(k_s) v_sᵀ.

    Args:
        q: ``[B, T, H, D]``; k: ``[B, T, Hk, D]``; v: ``[B, T, Hk, Dv]`` (GQA when ``Hk < H``).
        causal: A(t) = {s ≤ t} when True, all s otherwise.
        feature_map: ``"elu"`` (elu+1), ``"relu"`` or ``"identity"``, applied to q and k.
        normalize: divide by ``q̃_t·z_t + eps``.
        scale: multiplies φ(q); default 1.0 when ``normalize`` else ``D**-0.5``.
        initial_state: ``(S [N,H,D,Dv], z [N,H,D])`` float32 (causal only); N = B, or sequences in ``cu_seqlens``.
        output_final_state: also return ``(S_T, z_T)``.
        cu_seqlens: int32 ``[N+1]`` offsets packing N sequences into ``B == 1``.
        backend: ``"auto" | "triton" | "cuda" | "torch"``.

    Returns:
        ``o [B, T, H, Dv]`` in the input dtype, or ``(o, (S_T, z_T))`` with ``output_final_state``.
    """
    if not torch.compiler.is_compiling():   # T = 1 on CPU, eager: the step in O(1) Python (None: general path)
        fast = _fast_step.linear(q, k, v, causal, feature_map, normalize, scale, eps, initial_state,
                                 output_final_state, cu_seqlens, backend)
        if fast is not None:
            return fast
    a = _validate.check_linear(q, k, v, causal, feature_map, normalize, scale, eps, initial_state,
                               output_final_state, cu_seqlens)
    q, k, v = cast_for_autocast(q, k, v)
    be = _backend.resolve(OP, backend, a.device, q.dtype)
    _validate.backend_dtype(OP, be, q.dtype)
    S0, z0 = a.initial_state if a.initial_state is not None else (None, None)
    o, S, z = _fwd(q, k, v, S0, z0, cu_seqlens, causal, feature_map, normalize, a.scale, a.eps, be)
    return (o, (S, z)) if output_final_state else o
