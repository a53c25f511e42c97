"""Sliding-window attention (SPEC §2): public function, custom op (torch.compile) and autograd.

Backends implement, in the module registered for them::

    sliding_window_attention_fwd(q, k, v, cu_seqlens, left, right, scale)
        -> (o [B,T,H,Dv] in q.dtype, lse [B,H,T] float32 (float64 for float64 inputs))
    sliding_window_attention_bwd(do, dlse, q, k, v, o, lse, cu_seqlens, left, right, scale)
        -> (dq, dk, dv)                  # dlse may be None

``left``/``right`` are ints >= -1 (-1 = unbounded). Rows with no allowed key cannot occur
(query i always sees key i). All returned tensors are new.
"""
# no `from __future__ import annotations`: torch < 2.5's custom_op reads the annotations as objects, not strings

from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend, _validate
from ._common import cast_for_autocast, no_autocast, state_dtype

OP = "sliding_window_attention"
_backend.register(OP, "torch", "flashts.torch_ops.sliding_window")
_backend.register(OP, "triton", "flashts.kernels.sliding_window_attention", gpu_rank=1)
_backend.register(OP, "cuda", "flashts.cuda_ops.sliding_window", gpu_rank=2)


@torch.library.custom_op("flashts::sliding_window_attention_fwd", mutates_args=())
def _fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], left: int, right: int, scale: float,
         backend: str) -> tuple[Tensor, Tensor]:
    impl = _backend.module_for(OP, backend)
    with no_autocast(q.device):
        return impl.sliding_window_attention_fwd(q, k, v, cu_seqlens, left, right, scale)


@_fwd.register_fake
def _fwd_fake(q, k, v, cu_seqlens, left, right, scale, backend):
    B, T, H, _ = q.shape
    return q.new_empty((B, T, H, v.shape[-1])), q.new_empty((B, H, T), dtype=state_dtype(q.dtype))


@torch.library.custom_op("flashts::sliding_window_attention_bwd", mutates_args=())
def _bwd(do: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
         cu_seqlens: Optional[Tensor], left: int, right: int, scale: float,
         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    impl = _backend.module_for(OP, backend)
    with no_autocast(q.device):
        return impl.sliding_window_attention_bwd(do, dlse, q, k, v, o, lse, cu_seqlens, left, right, scale)


@_bwd.register_fake
def _bwd_fake(do, dlse, q, k, v, *args):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, cu_seqlens = inputs[:4]
    ctx.params = inputs[4:]
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)


def _backward(ctx, do, dlse):
    q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = _bwd(do, dlse, q, k, v, o, lse, cu_seqlens, *ctx.params)
    return (dq, dk, dv) + (None,) * 5


_fwd.register_autograd(_backward, setup_context=_setup)


def sliding_window_attention(q: Tensor, k: Tensor, v: Tensor, *, window: tuple[int, int],
                             scale: Optional[float] = None, cu_seqlens: Optional[Tensor] = None,
                             return_lse: bool = False, backend: str = "auto") -> Any:
    """Softmax attention of query i over keys j with i - left <= j <= i + right (FlashAttention's window).

    Args:
        q: ``[B, T, H, D]``; k: ``[B, T, Hk, D]``; v: ``[B, T, Hk, Dv]`` (GQA when ``Hk < H``).
        window: ``(left, right)``, ints >= -1, -1 = unbounded on that side. ``(w-1, 0)`` is a causal
            window of w keys; ``(-1, 0)`` full causal attention; ``(-1, -1)`` full attention.
        scale: score scale, default ``D**-0.5``.
        cu_seqlens: int32 ``[N+1]`` offsets packing N sequences into ``B == 1``.
        return_lse: also return ``lse [B, H, T]`` float32, the log-sum-exp of the allowed scores.

    Returns:
        ``o [B, T, H, Dv]``, or ``(o, lse)`` with ``return_lse``. Cost O(T·(left+right+1)·D).
    """
    a = _validate.check_sliding_window(q, k, v, window, scale, cu_seqlens, return_lse)
    q, k, v = cast_for_autocast(q, k, v)
    be = _backend.resolve(OP, backend, a.device, q.dtype)
    _validate.backend_dtype(OP, be, q.dtype)
    o, lse = _fwd(q, k, v, cu_seqlens, a.left, a.right, a.scale, be)
    return (o, lse) if return_lse else o
