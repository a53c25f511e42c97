"""ProbSparse attention (Informer, SPEC §6): public function, custom op (torch.compile) and autograd.

Backends implement, in the module registered for them::

    prob_sparse_attention_fwd(q, k, v, sample_index, u, causal, scale)
        -> (o [B, L_Q, H, Dv] in q.dtype, index [B, H, u] int64 (sorted ascending),
            lse [B, H, u] float32 (float64 for float64 inputs): log-sum-exp of the active rows' scores)
    prob_sparse_attention_bwd(do, q, k, v, o, index, lse, causal, scale) -> (dq, dk, dv)

``sample_index`` is int64 ``[L_Q, U]`` on q's device (U >= 1 whenever u >= 1). The samples are drawn here,
outside the custom op, with the very call of the original (``torch.randint(L_K, (L_Q, U), generator=...)`` on
the CPU), so one seed gives Informer's samples on every backend.
"""
# no `from __future__ import annotations`: torch < 2.5's custom_op reads the annotations as objects, not strings

from typing import Any, Optional

import torch
from torch import Tensor

from .. import _backend, _validate
from ._common import cast_for_autocast, no_autocast, state_dtype

OP = "prob_sparse_attention"
_backend.register(OP, "torch", "flashts.torch_ops.prob_sparse")
_backend.register(OP, "triton", "flashts.kernels.prob_sparse", gpu_rank=1)


@torch.library.custom_op("flashts::prob_sparse_attention_fwd", mutates_args=())
def _fwd(q: Tensor, k: Tensor, v: Tensor, sample_index: Tensor, u: int, causal: bool, scale: float,
         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    impl = _backend.module_for(OP, backend)
    with no_autocast(q.device):
        return impl.prob_sparse_attention_fwd(q, k, v, sample_index, u, causal, scale)


@_fwd.register_fake
def _fwd_fake(q, k, v, sample_index, u, causal, scale, backend):
    B, L_Q, H, _ = q.shape
    return (q.new_empty((B, L_Q, H, v.shape[-1])), q.new_empty((B, H, u), dtype=torch.int64),
            q.new_empty((B, H, u), dtype=state_dtype(q.dtype)))


@torch.library.custom_op("flashts::prob_sparse_attention_bwd", mutates_args=())
def _bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, index: Tensor, lse: Tensor, causal: bool,
         scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    impl = _backend.module_for(OP, backend)
    with no_autocast(q.device):
        return impl.prob_sparse_attention_bwd(do, q, k, v, o, index, lse, causal, scale)


@_bwd.register_fake
def _bwd_fake(do, q, k, v, *args):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)  # contiguous, as the backends return


def _setup(ctx, inputs, output):
    q, k, v = inputs[:3]
    ctx.params = inputs[5:]  # causal, scale, backend
    ctx.save_for_backward(q, k, v, output[0], output[1], output[2])


def _backward(ctx, do, dindex, dlse):
    q, k, v, o, index, lse = ctx.saved_tensors
    if do is None:
        do = torch.zeros_like(o)
    dq, dk, dv = _bwd(do, q, k, v, o, index, lse, *ctx.params)
    return (dq, dk, dv) + (None,) * 5


_fwd.register_autograd(_backward, setup_context=_setup)


def prob_sparse_attention(q: Tensor, k: Tensor, v: Tensor, *, factor: int = 5, causal: bool = False,
                          scale: Optional[float] = None, sample_index: Optional[Tensor] = None,
                          generator: Optional[torch.Generator] = None, return_index: bool = False,
                          backend: str = "auto") -> Any:
    """Informer's ProbSparse attention: full softmax attention for the u "active" queries, a lazy answer for the rest.

    Per (batch, head): U = min(L_K, factor·⌈ln L_K⌉) keys are sampled per query (``sample_index``, shared by
    batch and heads); the sparsity measure M_i = max_j q_i·k_{s_ij} − Σ_j q_i·k_{s_ij} / L_K picks the
    u = min(L_Q, factor·⌈ln L_Q⌉) queries with the largest M. Those get softmax(scale·q_i·kᵀ) v over all keys
    (causal: keys j ≤ i); every other query gets the mean of v (non-causal) or the cumulative sum Σ_{j≤i} v_j
    (causal), exactly as the Time-Series-Library's ``ProbAttention``. Cost O((L_Q·U + u·L_K)·D), never the
    [L_Q, L_K, D] key expansion of the original.

    Args:
        q: ``[B, L_Q, H, D]``; k: ``[B, L_K, Hk, D]``; v: ``[B, L_K, Hk, Dv]`` (GQA when ``Hk < H``).
        factor: int >= 1, Informer's c.
        causal: keys j <= i only, and the cumulative sum for inactive rows (needs L_Q == L_K).
        scale: score scale, default ``D**-0.5``.
        sample_index: int64 ``[L_Q, U]`` sampled key per query (CPU or q's device). None: drawn as
            ``torch.randint(L_K, (L_Q, U), generator=generator)`` on the CPU, the original's call, so
            ``torch.manual_seed`` reproduces Informer's samples.
        generator: a CPU ``torch.Generator`` for that draw (only without ``sample_index``).
        return_index: also return the active query indices ``[B, H, u]`` int64 (sorted ascending).

    Returns:
        ``o [B, L_Q, H, Dv]``, or ``(o, index)`` with ``return_index``.

    Example::

        >>> q, k, v = (torch.randn(2, 96, 8, 64) for _ in range(3))
        >>> o = flashts.prob_sparse_attention(q, k, v, factor=5, generator=torch.Generator().manual_seed(0))
        >>> o.shape
        torch.Size([2, 96, 8, 64])
    """
    a = _validate.check_prob_sparse(q, k, v, factor, causal, scale, sample_index, generator, return_index)
    q, k, v = cast_for_autocast(q, k, v)
    be = _backend.resolve(OP, backend, a.device, q.dtype)
    _validate.backend_dtype(OP, be, q.dtype)
    if sample_index is None:
        # concrete sizes (check_prob_sparse specialised the lengths for this draw under dynamic shapes)
        sample_index = torch.randint(a.L_K, (a.L_Q, a.U), generator=generator)
    sample_index = sample_index.to(a.device)
    o, index, _ = _fwd(q, k, v, sample_index, a.u, causal, a.scale, be)
    return (o, index) if return_index else o
