"""ProbSparse attention (Informer, SPEC §6), torch backend: sampled scores by gather, top-u, a blocked online
softmax for the u active rows only, and the lazy rows as a mean / cumulative sum of v.

Math. Per (b, h) with kv head h // G: the sampled scores s_ij = q_i·k_{S_ij} (j < U, S = ``sample_index``)
give the sparsity measure M_i = max_j s_ij − (Σ_j s_ij) / L_K; the u rows with the largest M are active:

    active i:    o_i = Σ_j P_ij v_j,  P_ij = softmax_j(scale·q_i·k_j) over j < L_K (causal: j ≤ i)
    inactive i:  o_i = mean_j v_j (non-causal),  o_i = Σ_{j≤i} v_j (causal)

Forward. The sampled scores are formed for ``sample_rows`` queries at a time (a [rows, U, D] gather of k per
kv head), so memory is O(max(L_Q + L_K, 4096)·D) per head, never the [L_Q, L_K, D] expansion of the original;
cost O(L_Q·U·D). The active rows (u·G per kv head, rows of the G query heads that share it) run
FlashAttention's online softmax over ``BLOCK_K`` keys at a time: running max m, Σ exp(s − m), Σ exp(s − m) v,
lse = m + log Σ saved for the backward; the causal limit j ≤ i is a per-row mask (i = the row's position).
Cost O(u·L_K·D), memory O(u·BLOCK_K) per head.

Backward. With Δ_i = dO_i·O_i over the active rows (P recomputed from lse):
    dV_j += Σ_{i active} P_ij dO_i,   dS_ij = P_ij (dO_i·v_j − Δ_i),
    dQ_i = scale Σ_j dS_ij k_j (active rows; 0 for the inactive ones),   dK_j = scale Σ_{i active} dS_ij q_i,
and the lazy rows add to dV: (1/L_K) Σ_{i inactive} dO_i to every key (non-causal), Σ_{i ≥ j, inactive} dO_i to
key j (causal: a reversed cumulative sum). The selection (samples, top-u) carries no gradient.
Compute dtype float64 for float64 inputs, else float32; outputs in the input dtype. Indices come back sorted
ascending per (b, h).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..ops._common import state_dtype

BLOCK_K = 1024  # keys per block of the active rows' online softmax (tests shrink it)
SAMPLE_BUDGET = 4096  # at least this many (query, sample) pairs per gather chunk


def _heads(x: Tensor, Hk: int, dtype: torch.dtype) -> Tensor:
    """``[B, L, H, F]`` -> contiguous ``[B, Hk, G, L, F]`` in ``dtype``."""
    B, L, H, F = x.shape
    return _out(x.view(B, L, Hk, H // Hk, F).permute(0, 2, 3, 1, 4), dtype)


def _out(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A new contiguous copy of ``x`` in ``dtype`` (``.to(dtype, memory_format=...)`` returns ``x`` itself, strides
    and all, when the dtype already matches)."""
    return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)


def sparsity_measure(q_h: Tensor, k_h: Tensor, sample_index: Tensor, L_K: int) -> Tensor:
    """M ``[B, Hk, G, L_Q]`` from ``q_h [B, Hk, G, L_Q, D]``, ``k_h [B, Hk, L_K, D]``, ``sample_index [L_Q, U]``."""
    B, Hk, G, L_Q, D = q_h.shape
    U = sample_index.shape[1]
    M = q_h.new_empty((B, Hk, G, L_Q))
    rows = max(1, max(L_Q + L_K, SAMPLE_BUDGET) // U)
    for c0 in range(0, L_Q, rows):
        c1 = min(L_Q, c0 + rows)
        k_s = k_h.index_select(2, sample_index[c0:c1].reshape(-1)).view(B, Hk, c1 - c0, U, D)
        s = torch.einsum("bkgcd,bkcud->bkgcu", q_h[:, :, :, c0:c1], k_s)
        M[..., c0:c1] = s.amax(dim=-1) - s.sum(dim=-1) / L_K
    return M


def _gather_rows(x_h: Tensor, index: Tensor) -> Tensor:
    """Rows ``index [B, Hk, G, u]`` of ``x_h [B, Hk, G, L, F]`` -> ``[B, Hk, G·u, F]``."""
    B, Hk, G, u = index.shape
    F = x_h.shape[-1]
    return x_h.gather(3, index.unsqueeze(-1).expand(B, Hk, G, u, F)).view(B, Hk, G * u, F)


def _causal_banned(pos: Tensor, j0: int, j1: int):
    """``[B, Hk, R, j1 − j0]`` mask of keys after each row's own position, or None when no key is banned."""
    j = torch.arange(j0, j1, device=pos.device)
    return j > pos.unsqueeze(-1)


def prob_sparse_attention_fwd(q: Tensor, k: Tensor, v: Tensor, sample_index: Tensor, u: int, causal: bool,
                              scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (o [B, L_Q, H, Dv] in q.dtype, index [B, H, u] int64 sorted, lse [B, H, u] float32/float64)."""
    B, L_Q, H, D = q.shape
    L_K, Hk, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = H // Hk
    cdt = state_dtype(q.dtype)
    dev = q.device
    v_h = _heads(v, Hk, cdt).squeeze(2)  # [B, Hk, L_K, Dv]
    if causal:
        lazy = v_h.cumsum(dim=2).unsqueeze(2).expand(B, Hk, G, L_Q, Dv)
    else:
        lazy = v_h.mean(dim=2)[:, :, None, None, :].expand(B, Hk, G, L_Q, Dv)
    o_h = lazy.clone()  # [B, Hk, G, L_Q, Dv]
    if u == 0:
        return (_out(o_h.view(B, H, L_Q, Dv).permute(0, 2, 1, 3), q.dtype),
                torch.empty((B, H, 0), dtype=torch.int64, device=dev), torch.empty((B, H, 0), dtype=cdt, device=dev))
    q_h = _heads(q, Hk, cdt)  # [B, Hk, G, L_Q, D]
    k_h = _heads(k, Hk, cdt).squeeze(2)  # [B, Hk, L_K, D]
    M = sparsity_measure(q_h, k_h, sample_index, L_K)
    index = M.topk(u, dim=-1).indices.sort(dim=-1).values  # [B, Hk, G, u]
    q_act = _gather_rows(q_h, index) * scale  # [B, Hk, G·u, D], pre-scaled
    pos = index.view(B, Hk, G * u)
    R = G * u
    m = torch.full((B, Hk, R), float("-inf"), dtype=cdt, device=dev)
    row_sum = torch.zeros((B, Hk, R), dtype=cdt, device=dev)
    acc = torch.zeros((B, Hk, R, Dv), dtype=cdt, device=dev)
    for j0 in range(0, L_K, BLOCK_K):
        j1 = min(L_K, j0 + BLOCK_K)
        s = torch.matmul(q_act, k_h[:, :, j0:j1].transpose(-1, -2))
        if causal:
            s.masked_fill_(_causal_banned(pos, j0, j1), float("-inf"))
        m_new = torch.maximum(m, s.amax(dim=-1))
        m_use = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)  # no allowed key yet
        p = s.sub_(m_use.unsqueeze(-1)).exp_()
        rescale = torch.exp(m - m_use)
        row_sum = row_sum.mul_(rescale).add_(p.sum(dim=-1))
        acc = acc.mul_(rescale.unsqueeze(-1)).add_(torch.matmul(p, v_h[:, :, j0:j1]))
        m = m_new
    # every active row sees key 0 (causal) or every key: row_sum > 0
    o_act = (acc / row_sum.unsqueeze(-1)).view(B, Hk, G, u, Dv)
    o_h.scatter_(3, index.unsqueeze(-1).expand(B, Hk, G, u, Dv), o_act)
    lse = (m + torch.log(row_sum)).view(B, H, u)
    o = _out(o_h.view(B, H, L_Q, Dv).permute(0, 2, 1, 3), q.dtype)
    return o, index.view(B, H, u), lse


def prob_sparse_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, index: Tensor, lse: Tensor,
                              causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv) in the shapes and dtypes of q, k, v."""
    B, L_Q, H, D = q.shape
    L_K, Hk, Dv = k.shape[1], k.shape[2], v.shape[3]
    G = H // Hk
    u = index.shape[-1]
    cdt = state_dtype(q.dtype)
    dev = q.device
    do_h = _heads(do, Hk, cdt)  # [B, Hk, G, L_Q, Dv]
    idx = index.view(B, Hk, G, u)
    active = torch.zeros((B, Hk, G, L_Q), dtype=torch.bool, device=dev)
    active.scatter_(3, idx, True)
    lazy_do = do_h.masked_fill(active.unsqueeze(-1), 0.0).sum(dim=2)  # [B, Hk, L_Q, Dv]
    if causal:  # dv_j = Σ_{i ≥ j, inactive} dO_i
        dv_h = lazy_do.flip(2).cumsum(dim=2).flip(2)
    else:  # dv_j = Σ_{i inactive} dO_i / L_K
        dv_h = (lazy_do.sum(dim=2, keepdim=True) / L_K).expand(B, Hk, L_K, Dv).clone()
    dk_h = torch.zeros((B, Hk, L_K, D), dtype=cdt, device=dev)
    dq_h = torch.zeros((B, Hk, G, L_Q, D), dtype=cdt, device=dev)
    if u > 0:
        q_h = _heads(q, Hk, cdt)
        k_h = _heads(k, Hk, cdt).squeeze(2)
        v_h = _heads(v, Hk, cdt).squeeze(2)
        q_act = _gather_rows(q_h, idx) * scale  # same pre-scaled rows as the forward
        do_act = _gather_rows(do_h, idx)
        o_act = _gather_rows(_heads(o, Hk, cdt), idx)
        delta = (do_act * o_act).sum(dim=-1, keepdim=True)  # Δ_i
        lse_rows = lse.to(cdt).view(B, Hk, G * u, 1)
        pos = idx.reshape(B, Hk, G * u)
        dq_act = torch.zeros((B, Hk, G * u, D), dtype=cdt, device=dev)
        for j0 in range(0, L_K, BLOCK_K):
            j1 = min(L_K, j0 + BLOCK_K)
            k_blk, v_blk = k_h[:, :, j0:j1], v_h[:, :, j0:j1]
            s = torch.matmul(q_act, k_blk.transpose(-1, -2))
            if causal:
                s.masked_fill_(_causal_banned(pos, j0, j1), float("-inf"))
            p = s.sub_(lse_rows).exp_()
            dv_h[:, :, j0:j1] += torch.matmul(p.transpose(-1, -2), do_act)
            ds = torch.matmul(do_act, v_blk.transpose(-1, -2)).sub_(delta).mul_(p)
            dq_act += torch.matmul(ds, k_blk)
            dk_h[:, :, j0:j1] += torch.matmul(ds.transpose(-1, -2), q_act)  # q_act carries the scale
        dq_h.scatter_(3, idx.unsqueeze(-1).expand(B, Hk, G, u, D), (dq_act * scale).view(B, Hk, G, u, D))
    dq = _out(dq_h.view(B, H, L_Q, D).permute(0, 2, 1, 3), q.dtype)
    dk = _out(dk_h.permute(0, 2, 1, 3), k.dtype)
    dv = _out(dv_h.permute(0, 2, 1, 3), v.dtype)
    return dq, dk, dv
