"""Sliding-window attention (SPEC §2), torch backend: FlashAttention-2 style blocked online softmax.

Math. For query i and key j of the same sequence, s_ij = scale·q_i·k_j, allowed iff
``i − left ≤ j ≤ i + right`` (−1 = unbounded on that side) and j lies in i's sequence. Then

    lse_i = log Σ_{j allowed} exp(s_ij),   P_ij = exp(s_ij − lse_i),   o_i = Σ_j P_ij v_j.

Blocking (forward). Queries are taken ``BLOCK_Q`` rows at a time; for rows [i0, i1) only the keys in
[i0 − left, i1 − 1 + right] ∩ [sequence start, sequence end) are visited, ``BLOCK_K`` keys at a time. A
running max m, running sum l = Σ exp(s − m) (``row_sum``) and accumulator acc = Σ exp(s − m) v give, after the
last key block, o = acc / l and lse = m + log l (online softmax: when m grows to m', l and acc are
multiplied by exp(m − m')). Disallowed scores are set to −inf BEFORE any exp, only in blocks that cross
the window's edge; the max used for exp is replaced by 0 while a row has seen no allowed key yet, so no
exp(−inf + inf) is ever formed. Memory is O(B·H·BLOCK_Q·BLOCK_K) plus the O(T) inputs/outputs; work is
O(T·(BLOCK_Q + left + right)·D), never a T×T tensor.

Backward (recompute, FlashAttention-2). With Δ_i = Σ_d dO_i·O_i and dlse the cotangent of lse (may be None):
    P = exp(s − lse)                       (recomputed per block from the saved lse)
    dV_j += Σ_i P_ij dO_i,   dP_ij = dO_i·v_j
    dS_ij = P_ij (dP_ij − Δ_i + dlse_i)    (softmax Jacobian: ∂o_i/∂s_ij = P_ij (v_j − o_i),
                                            ∂lse_i/∂s_ij = P_ij, and Σ_j P_ij dP_ij = dO_i·o_i = Δ_i)
    dQ_i += scale Σ_j dS_ij k_j,   dK_j += scale Σ_i dS_ij q_i.

GQA: the G = H / Hk query heads that share a kv head are folded into the rows of one block (rows ordered
(time, group)), so one matmul against the shared K/V block serves the group and dK/dV are summed over the
group by the same matmul; K and V are never repeated. ``cu_seqlens``: a Python loop over sequences, each
blocked as above with keys clipped to the sequence. Compute dtype: float64 for float64 inputs, float32
otherwise; outputs in the input dtype, lse in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops._common import new_empty, state_dtype

# Rows of queries and columns of keys per block (module constants; tests shrink them to force many blocks).
BLOCK_Q = 128
BLOCK_K = 256


def _to_heads_major(x: Tensor, Hk: int, dtype: torch.dtype) -> Tensor:
    """``[B, T, H, D]`` -> contiguous ``[B, Hk, T, G, D]`` in ``dtype`` (G = H // Hk)."""
    B, T, H, D = x.shape
    return x.view(B, T, Hk, H // Hk, D).permute(0, 2, 1, 3, 4).to(dtype, memory_format=torch.contiguous_format)


# A narrow bounded window (left + right ≤ NARROW) takes query blocks of at most NARROW_BLOCK_Q rows and one key block
# spanning exactly the keys they can see (measured on CPU, B1 H4 D64 T4096, windows (127,0)/(64,64): 5–20 %
# faster forward and forward+backward than 128 × 256 blocks; a full causal window keeps the large blocks).
NARROW, NARROW_BLOCK_Q = 256, 64


def _block_sizes(left: int, right: int) -> tuple[int, int]:
    """(rows per query block, keys per key block); never larger than BLOCK_Q / BLOCK_K."""
    if 0 <= left and 0 <= right and left + right <= NARROW:
        bq = min(BLOCK_Q, NARROW_BLOCK_Q)
        return bq, min(BLOCK_K, bq + left + right)
    return BLOCK_Q, BLOCK_K


def _seq_bounds(cu_seqlens: Optional[Tensor], T: int) -> list[tuple[int, int]]:
    if cu_seqlens is None:
        return [(0, T)]
    b = [int(x) for x in cu_seqlens.tolist()]
    return [(a, e) for a, e in zip(b[:-1], b[1:]) if e > a]


def _key_range(i0: int, i1: int, t0: int, t1: int, left: int, right: int) -> tuple[int, int]:
    """Keys [lo, hi) some query of rows [i0, i1) may attend, clipped to the sequence [t0, t1)."""
    lo = t0 if left < 0 else max(t0, i0 - left)
    hi = t1 if right < 0 else min(t1, i1 + right)
    return lo, hi


def _block_mask(i0: int, i1: int, j0: int, j1: int, left: int, right: int, G: int,
                device: torch.device) -> Optional[Tensor]:
    """Boolean ``[(i1-i0)·G, j1-j0]`` mask of DISALLOWED (row, key) pairs, or None when all are allowed."""
    full = (left < 0 or j0 >= i1 - 1 - left) and (right < 0 or j1 - 1 <= i0 + right)
    if full:
        return None
    i = torch.arange(i0, i1, device=device).unsqueeze(1)
    j = torch.arange(j0, j1, device=device).unsqueeze(0)
    banned = torch.zeros(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
    if left >= 0:
        banned |= j < i - left
    if right >= 0:
        banned |= j > i + right
    return banned.repeat_interleave(G, dim=0) if G > 1 else banned


def _scores(q_rows: Tensor, k_blk: Tensor, banned: Optional[Tensor]) -> Tensor:
    """s = (scale·q) kᵀ for one block, disallowed entries set to −inf (before any exp)."""
    s = torch.matmul(q_rows, k_blk.transpose(-1, -2))
    if banned is not None:
        s.masked_fill_(banned, float("-inf"))
    return s


# Band forward (a narrow bounded window, no cu_seqlens): query block i (rows i·bq … i·bq + bq − 1) sees exactly the
# bk = bq + left + right keys i·bq − left … i·bq + bq − 1 + right, so the key blocks of all query blocks are one
# strided view of the (padded) keys and a group of BAND_GROUP_ELEMENTS score elements takes ONE batched matmul and a
# plain (single-pass) softmax: no online rescaling, and the window mask is the same [bq, bk] band for every block
# (row r may see columns r … r + left + right), with the keys outside the sequence masked only in the first and
# last blocks. Each group copies only its own rows and keys: memory O(group) besides the outputs.
BAND_GROUP_ELEMENTS = 1 << 20


def _band_forward(q: Tensor, k: Tensor, v: Tensor, left: int, right: int, bq: int, scale: float, cdt: torch.dtype,
                  o: Tensor, lse: Tensor):
    """Writes o ``[B, T, H, Dv]`` and lse ``[B, H, T]`` from the time-major ``q [B, T, H, D]``, ``k, v [B, T, Hk, ·]``;
    each group of query blocks copies only its own rows and keys (heads-major, compute dtype, zero outside the
    sequence), so no whole-sequence temporary exists."""
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    G = H // Hk
    nq = -(-T // bq)
    bk = bq + left + right
    dev = q.device
    r = torch.arange(bq, device=dev).unsqueeze(1)
    c = torch.arange(bk, device=dev).unsqueeze(0)
    banned = ((c < r) | (c > r + left + right)).repeat_interleave(G, dim=0)   # [bq·G, bk]
    o_v = o.view(B, T, Hk, G, Dv)
    lse_v = lse.view(B, Hk, G, T)
    per_block = B * Hk * bq * G * bk
    step = max(1, BAND_GROUP_ELEMENTS // per_block)

    def keys(x: Tensor, a0: int, a1: int) -> Tensor:   # keys a0 … a1 − 1 as [B, Hk, a1 − a0, F], zero outside [0, T)
        buf = x.new_zeros((B, Hk, a1 - a0, x.shape[-1]), dtype=cdt)
        lo, hi = max(0, a0), min(T, a1)
        buf[:, :, lo - a0:hi - a0] = x[:, lo:hi].transpose(1, 2)
        return buf

    def band(x: Tensor, n: int) -> Tensor:   # [B, Hk, ·, F] -> [B, Hk, n, bk, F], block i = rows i·bq … i·bq + bk − 1
        sB, sH, sT, sF = x.stride()
        return x.as_strided((B, Hk, n, bk, x.shape[-1]), (sB, sH, bq * sT, sT, sF))

    for i0 in range(0, nq, step):
        i1 = min(nq, i0 + step)
        n = i1 - i0
        t0, t1 = i0 * bq, min(T, i1 * bq)
        q_g = _to_heads_major(q[:, t0:t1], Hk, cdt) * scale                 # [B, Hk, rows, G, D] (new tensor)
        if t1 - t0 != n * bq:
            q_g = torch.nn.functional.pad(q_g, (0, 0, 0, 0, 0, n * bq - (t1 - t0)))
        a0 = t0 - left
        k_g, v_g = keys(k, a0, a0 + n * bq + left + right), keys(v, a0, a0 + n * bq + left + right)
        s = q_g.reshape(B, Hk, n, bq * G, D) @ band(k_g, n).transpose(-1, -2)   # [B, Hk, n, bq·G, bk]
        s.masked_fill_(banned, float("-inf"))
        for i in range(i0, i1):   # keys outside [0, T): only in the first and last blocks
            lo, hi = left - i * bq, T - i * bq + left                   # allowed columns [lo, hi)
            if lo > 0:
                s[:, :, i - i0, :, :lo] = float("-inf")
            if hi < bk:
                s[:, :, i - i0, :, max(hi, 0):] = float("-inf")
        m = s.amax(dim=-1, keepdim=True)
        m.masked_fill_(torch.isneginf(m), 0.0)                          # padded rows that see no key: no NaN
        p = s.sub_(m).exp_()
        row_sum = p.sum(dim=-1)
        out = (p @ band(v_g, n)).div_(row_sum.unsqueeze(-1))            # [B, Hk, n, bq·G, Dv]
        rows = n * bq
        o_v[:, t0:t1] = out.view(B, Hk, rows, G, Dv)[:, :, :t1 - t0].permute(0, 2, 1, 3, 4)
        lse_blk = (m.squeeze(-1) + torch.log(row_sum)).view(B, Hk, rows, G)[:, :, :t1 - t0]
        lse_v[:, :, :, t0:t1] = lse_blk.permute(0, 1, 3, 2)


def sliding_window_attention_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], left: int,
                                 right: int, scale: float) -> tuple[Tensor, Tensor]:
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    G = H // Hk
    cdt = state_dtype(q.dtype)
    dev = q.device
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=dev)
    lse = new_empty((B, H, T), dtype=cdt, device=dev)
    bq_max, bk_max = _block_sizes(left, right)
    if cu_seqlens is None and left >= 0 and right >= 0 and bk_max == bq_max + left + right and T > 0:
        _band_forward(q, k, v, left, right, bq_max, scale, cdt, o, lse)
        return o, lse
    q_h = _to_heads_major(q, Hk, cdt) * scale  # [B, Hk, T, G, D], pre-scaled (new tensor)
    k_h = _to_heads_major(k, Hk, cdt).squeeze(3)  # [B, Hk, T, D]
    v_h = _to_heads_major(v, Hk, cdt).squeeze(3)  # [B, Hk, T, Dv]

    for t0, t1 in _seq_bounds(cu_seqlens, T):
        for i0 in range(t0, t1, bq_max):
            i1 = min(i0 + bq_max, t1)
            nq = i1 - i0
            q_rows = q_h[:, :, i0:i1].reshape(B, Hk, nq * G, D)  # rows ordered (time, group)
            m = torch.full((B, Hk, nq * G), float("-inf"), dtype=cdt, device=dev)  # running max
            row_sum = torch.zeros((B, Hk, nq * G), dtype=cdt, device=dev)  # running Σ exp(s − m)
            acc = torch.zeros((B, Hk, nq * G, Dv), dtype=cdt, device=dev)  # running Σ exp(s − m) v
            lo, hi = _key_range(i0, i1, t0, t1, left, right)
            for j0 in range(lo, hi, bk_max):
                j1 = min(j0 + bk_max, hi)
                s = _scores(q_rows, k_h[:, :, j0:j1], _block_mask(i0, i1, j0, j1, left, right, G, dev))
                m_new = torch.maximum(m, s.amax(dim=-1))
                # rows that have seen no allowed key yet keep m = −inf: subtract 0 instead (exp(−inf) = 0)
                m_use = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
                p = s.sub_(m_use.unsqueeze(-1)).exp_()  # in place: s is not needed any more
                rescale = torch.exp(m - m_use)  # exp(−inf) = 0 on the first contributing block
                row_sum = row_sum.mul_(rescale).add_(p.sum(dim=-1))
                acc = acc.mul_(rescale.unsqueeze(-1)).add_(torch.matmul(p, v_h[:, :, j0:j1]))
                m = m_new
            # every query sees at least itself, so row_sum > 0 and m is finite here
            o_blk = (acc / row_sum.unsqueeze(-1)).view(B, Hk, nq, G, Dv).permute(0, 2, 1, 3, 4).reshape(B, nq, H, Dv)
            o[:, i0:i1] = o_blk.to(q.dtype)
            lse[:, :, i0:i1] = (m + torch.log(row_sum)).view(B, Hk, nq, G).permute(0, 1, 3, 2).reshape(B, H, nq)
    return o, lse


def sliding_window_attention_bwd(do: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, o: Tensor,
                                 lse: Tensor, cu_seqlens: Optional[Tensor], left: int, right: int,
                                 scale: float) -> tuple[Tensor, Tensor, Tensor]:
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    G = H // Hk
    cdt = state_dtype(q.dtype)
    dev = q.device
    q_h = _to_heads_major(q, Hk, cdt) * scale  # same pre-scaled q as the forward -> identical scores
    k_h = _to_heads_major(k, Hk, cdt).squeeze(3)
    v_h = _to_heads_major(v, Hk, cdt).squeeze(3)
    do_h = _to_heads_major(do, Hk, cdt)  # [B, Hk, T, G, Dv]
    # Δ_i = dO_i·O_i; the row term of dS is (dlse_i − Δ_i)
    row_term = -(do_h * _to_heads_major(o, Hk, cdt)).sum(dim=-1)  # [B, Hk, T, G]
    if dlse is not None:
        row_term += dlse.to(cdt).view(B, Hk, G, T).permute(0, 1, 3, 2)
    lse_h = lse.to(cdt).view(B, Hk, G, T).permute(0, 1, 3, 2)  # [B, Hk, T, G]

    dq = new_empty((B, T, H, D), dtype=q.dtype, device=dev)
    dk_h = torch.zeros((B, Hk, T, D), dtype=cdt, device=dev)  # keys of empty rows / other sequences: 0
    dv_h = torch.zeros((B, Hk, T, Dv), dtype=cdt, device=dev)
    bq_max, bk_max = _block_sizes(left, right)

    for t0, t1 in _seq_bounds(cu_seqlens, T):
        for i0 in range(t0, t1, bq_max):
            i1 = min(i0 + bq_max, t1)
            nq = i1 - i0
            q_rows = q_h[:, :, i0:i1].reshape(B, Hk, nq * G, D)
            do_rows = do_h[:, :, i0:i1].reshape(B, Hk, nq * G, Dv)
            lse_rows = lse_h[:, :, i0:i1].reshape(B, Hk, nq * G, 1)
            term_rows = row_term[:, :, i0:i1].reshape(B, Hk, nq * G, 1)
            dq_rows = torch.zeros((B, Hk, nq * G, D), dtype=cdt, device=dev)
            lo, hi = _key_range(i0, i1, t0, t1, left, right)
            for j0 in range(lo, hi, bk_max):
                j1 = min(j0 + bk_max, hi)
                k_blk, v_blk = k_h[:, :, j0:j1], v_h[:, :, j0:j1]
                s = _scores(q_rows, k_blk, _block_mask(i0, i1, j0, j1, left, right, G, dev))
                p = s.sub_(lse_rows).exp_()  # masked: exp(−inf) = 0; allowed: s − lse ≤ 0
                dv_h[:, :, j0:j1] += torch.matmul(p.transpose(-1, -2), do_rows)  # sums the G heads too
                dp = torch.matmul(do_rows, v_blk.transpose(-1, -2))
                ds = dp.add_(term_rows).mul_(p)  # dS = P ⊙ (dP − Δ + dlse), in dp's storage
                dq_rows += torch.matmul(ds, k_blk)
                dk_h[:, :, j0:j1] += torch.matmul(ds.transpose(-1, -2), q_rows)  # q_rows carries the scale
            dq_blk = (dq_rows * scale).view(B, Hk, nq, G, D).permute(0, 2, 1, 3, 4).reshape(B, nq, H, D)
            dq[:, i0:i1] = dq_blk.to(q.dtype)
    dk = dk_h.permute(0, 2, 1, 3).to(k.dtype, memory_format=torch.contiguous_format)
    dv = dv_h.permute(0, 2, 1, 3).to(v.dtype, memory_format=torch.contiguous_format)
    return dq, dk, dv
