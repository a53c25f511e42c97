"""ProbSparse attention (Informer, SPEC §6) for the ``triton`` backend.

Math. Per (b, h), kv head h // G: sampled scores s_ij = q_i·k_{S_ij} (j < U, S = ``sample_index [L_Q, U]``),
sparsity M_i = max_j s_ij − Σ_j s_ij / L_K; the u rows with the largest M are active:

    active i:    o_i = Σ_j P_ij v_j,  P_ij = softmax_j(scale·q_i·k_j), j < L_K (causal: j ≤ i)
    inactive i:  o_i = mean_j v_j (non-causal),  o_i = Σ_{j≤i} v_j (causal)

Forward, three steps:
1. ``_ps_sample_kernel`` (one program per BLOCK_M queries × (b, h)): loads the q tile [BLOCK_M, D] once, then
   for each of the U samples gathers the sampled key row of every query ([BLOCK_M, D], row S_ij of k) and
   reduces q·k over D in float32, keeping max and sum: M [B, H, L_Q] float32. Cost O(L_Q·U·D), no
   [L_Q, L_K, D] expansion (the original's), no [L_Q, U, D] gather either.
2. top-u of M per (b, h): ``torch.topk`` in the launcher (u = O(log L)), indices sorted ascending; an int8
   flag per row (1 = active).
3. ``_ps_fwd_kernel``, one launch, two kinds of programs:
   * active programs (BLOCK_M active rows × (b, h)): gather the q rows at the active positions, FlashAttention
     online softmax (base 2, running max / sum / accumulator) over key blocks of BLOCK_N, the causal limit
     j ≤ position per row (blocks past the block's largest position are not visited); o written into the
     active rows, lse [B, H, u] saved.
   * lazy programs (one per (b, kv head)): walk v in blocks of BLOCK_T: the running sum (causal: tl.cumsum in
     the block plus the carry) or the total then the mean (non-causal), written to the inactive rows of the G
     query heads (the flag masks the store, so the two kinds of programs never write the same row).

Backward (P recomputed from lse, Δ_i = dO_i·O_i over the active rows):
    dV_j = Σ_{i active} P_ij dO_i + lazy_j,  dS_ij = P_ij (dO_i·v_j − Δ_i),
    dQ_i = scale Σ_j dS_ij k_j (active rows; 0 elsewhere),  dK_j = scale Σ_{i active} dS_ij q_i,
    lazy_j = Σ_{i inactive} dO_i / L_K (non-causal),  Σ_{i ≥ j, inactive} dO_i (causal; summed over the G heads)
* ``_ps_bwd_rows_kernel``, one launch: active programs recompute the active rows' softmax, store Δ and dQ at
  the active rows; lazy programs (one per (b, kv head)) write lazy_j (float32; causal: a reversed running sum,
  walking the blocks from the end).
* ``_ps_bwd_dkdv_kernel`` (one program per BLOCK_N keys × (b, kv head)): loops over the G query heads and their
  active rows in blocks of BLOCK_M (scores held transposed, [keys, rows]), dK and dV in float32 registers (no
  atomics, deterministic), adds lazy_j to dV.

Precision: float32 accumulation everywhere; ``tl.dot`` with "ieee" for float32 inputs, tensor cores for
float16/bfloat16 (P and dS cast to the input dtype for the second product, as FlashAttention). Under the
interpreter (CPU tensors) bfloat16 tiles are upcast to float32 after the load. Head dims are padded to a power of
two >= 16 (masked). GPU tiles (chosen by compiling for sm_90 with Triton 3.9 and reading ptxas' spills, not
timed): float16/bfloat16 BLOCK_M = min(64, next power of two >= u) active rows (>= 16), BLOCK_N = 64 keys, dK/dV
64 keys × 32 rows, 4 warps (8 from head dim 128); float32 BLOCK_M <= 32, BLOCK_N = 32 (16 from head dim 128), dK/dV BLOCK_N × 16, 8 warps.
BLOCK_T = 64 lazy rows. Interpreter: 16 everywhere; ``BLOCKS = (rows, keys)`` overrides (tests).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from flashts.kernels import autotune
from flashts.ops import _common
from flashts.ops._common import new_empty

LOG2E = 1.4426950408889634
BLOCKS: Optional[tuple[int, int]] = None  # (active rows / lazy rows per block, keys per block), tests only


@triton.jit
def _load_tile(ptrs, row_ok, cols, N_COLS: tl.constexpr, UPCAST: tl.constexpr):
    x = tl.load(ptrs, mask=row_ok[:, None] & (cols[None, :] < N_COLS), other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


# --------------------------------------------------------------------------- sparsity measure


@triton.jit(do_not_specialize=["L_Q", "L_K", "U", "n_blocks"])
def _ps_sample_kernel(Q, K, SI, M, sqb, sqt, sqh, skb, skt, skh, L_Q, L_K, U, H, G, n_blocks,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """M[b, h, i] = max_j q_i·k_{S_ij} − Σ_j q_i·k_{S_ij} / L_K for BLOCK_M queries (float32 products)."""
    pid = tl.program_id(0)
    blk = pid % n_blocks
    bh = pid // n_blocks
    b = bh // H
    h = bh % H
    hk = h // G
    rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < L_Q
    offs_d = tl.arange(0, BLOCK_D)
    tile_ok = row_ok[:, None] & (offs_d[None, :] < D)
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + rows[:, None].to(tl.int64) * sqt
                + offs_d[None, :], mask=tile_ok, other=0.0).to(tl.float32)
    K_head = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    s_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    s_sum = tl.zeros([BLOCK_M], tl.float32)
    for j in range(U):
        key = tl.load(SI + rows.to(tl.int64) * U + j, mask=row_ok, other=0)
        k = tl.load(K_head + key[:, None].to(tl.int64) * skt + offs_d[None, :], mask=tile_ok, other=0.0)
        s = tl.sum(q * k.to(tl.float32), 1)
        s_max = tl.maximum(s_max, s)
        s_sum += s
    tl.store(M + bh.to(tl.int64) * L_Q + rows, s_max - s_sum / L_K, mask=row_ok)


# --------------------------------------------------------------------------- forward


@triton.jit
def _active_rows(IDX, bh, blk, u, BLOCK_M: tl.constexpr):
    """Slots r of this block, whether they exist (r < u) and their row positions (0 where they do not)."""
    r = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = r < u
    pos = tl.load(IDX + bh.to(tl.int64) * u + r, mask=r_ok, other=0)
    return r, r_ok, pos


@triton.jit
def _fwd_active(Q, K, V, O, LSE, IDX, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                L_K, u, H, G, n_act, pid, qk_scale,
                D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
                UPCAST: tl.constexpr):
    blk = pid % n_act
    bh = pid // n_act
    b = bh // H
    h = bh % H
    hk = h // G
    r, r_ok, pos = _active_rows(IDX, bh, blk, u, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    q = _load_tile(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + pos[:, None] * sqt + offs_d[None, :],
                   r_ok, offs_d, D, UPCAST)
    K_head = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    V_head = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    if CAUSAL:
        hi = tl.max(pos, 0) + 1  # no row of the block sees a key past its largest position
    else:
        hi = L_K
    for j0 in range(0, hi, BLOCK_N):
        offs_j = j0 + offs_n
        j_ok = offs_j < L_K
        k = _load_tile(K_head + offs_j[:, None].to(tl.int64) * skt + offs_d[None, :], j_ok, offs_d, D, UPCAST)
        v = _load_tile(V_head + offs_j[:, None].to(tl.int64) * svt + offs_dv[None, :], j_ok, offs_dv, DV, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # log2 units
        ok = j_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_j[None, :] <= pos[:, None])
        s = tl.where(ok, s, float("-inf"))  # before any exp
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no allowed key yet
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
        m_i = m_new
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # existing rows see key 0 at least: l_i > 0
    o = acc / l_safe[:, None]
    tl.store(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + pos[:, None] * sot + offs_dv[None, :],
             o.to(O.dtype.element_ty), mask=r_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(LSE + bh.to(tl.int64) * u + r, (m_i + tl.math.log2(l_safe)) * 0.6931471805599453, mask=r_ok)


@triton.jit
def _fwd_lazy(V, O, FLAG, svb, svt, svh, sob, sot, soh, L_Q, L_K, H, Hk, G, lid,
              DV: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr):
    b = lid // Hk
    hk = lid % Hk
    offs_t = tl.arange(0, BLOCK_T)
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    V_head = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    carry = tl.zeros([BLOCK_DV], tl.float32)
    if CAUSAL:  # L_Q == L_K: row i gets Σ_{j ≤ i} v_j
        for t0 in range(0, L_K, BLOCK_T):
            t = t0 + offs_t
            t_ok = t < L_K
            v = tl.load(V_head + t[:, None].to(tl.int64) * svt + offs_dv[None, :],
                        mask=t_ok[:, None] & dv_ok[None, :], other=0.0).to(tl.float32)
            run = tl.cumsum(v, 0) + carry[None, :]
            carry += tl.sum(v, 0)
            for g in range(G):
                h = hk * G + g
                lazy = tl.load(FLAG + (b * H + h).to(tl.int64) * L_Q + t, mask=t_ok, other=1) == 0
                tl.store(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + t[:, None].to(tl.int64) * sot
                         + offs_dv[None, :], run.to(O.dtype.element_ty), mask=lazy[:, None] & dv_ok[None, :])
    else:
        for t0 in range(0, L_K, BLOCK_T):
            t = t0 + offs_t
            v = tl.load(V_head + t[:, None].to(tl.int64) * svt + offs_dv[None, :],
                        mask=(t[:, None] < L_K) & dv_ok[None, :], other=0.0).to(tl.float32)
            carry += tl.sum(v, 0)
        mean = tl.zeros([BLOCK_T, BLOCK_DV], tl.float32) + (carry / L_K)[None, :]
        for t0 in range(0, L_Q, BLOCK_T):
            t = t0 + offs_t
            t_ok = t < L_Q
            for g in range(G):
                h = hk * G + g
                lazy = tl.load(FLAG + (b * H + h).to(tl.int64) * L_Q + t, mask=t_ok, other=1) == 0
                tl.store(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + t[:, None].to(tl.int64) * sot
                         + offs_dv[None, :], mean.to(O.dtype.element_ty), mask=lazy[:, None] & dv_ok[None, :])


@triton.jit(do_not_specialize=["L_Q", "L_K", "u", "n_act", "n_act_total"])
def _ps_fwd_kernel(Q, K, V, O, LSE, IDX, FLAG, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                   L_Q, L_K, u, H, Hk, G, n_act, n_act_total, qk_scale,
                   D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr,
                   PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Programs [0, n_act_total): active rows (online softmax over all keys); the rest: one lazy program per
    (b, kv head) writing the mean / running sum of v to the inactive rows."""
    pid = tl.program_id(0)
    if pid < n_act_total:
        _fwd_active(Q, K, V, O, LSE, IDX, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                    L_K, u, H, G, n_act, pid, qk_scale, D, DV, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, CAUSAL, PREC,
                    UPCAST)
    else:
        _fwd_lazy(V, O, FLAG, svb, svt, svh, sob, sot, soh, L_Q, L_K, H, Hk, G, pid - n_act_total,
                  DV, BLOCK_T, BLOCK_DV, CAUSAL)


# --------------------------------------------------------------------------- backward


@triton.jit
def _bwd_active(Q, K, V, O, DO, LSE, IDX, DELTA, DQ, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
                sob, sot, soh, sdb, sdt, sdh, sdqb, sdqt, sdqh, L_K, u, H, G, n_act, pid, qk_scale, scale,
                D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
                UPCAST: tl.constexpr):
    blk = pid % n_act
    bh = pid // n_act
    b = bh // H
    h = bh % H
    hk = h // G
    r, r_ok, pos = _active_rows(IDX, bh, blk, u, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    offs_n = tl.arange(0, BLOCK_N)
    q = _load_tile(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + pos[:, None] * sqt + offs_d[None, :],
                   r_ok, offs_d, D, UPCAST)
    do = _load_tile(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + pos[:, None] * sdt + offs_dv[None, :],
                    r_ok, offs_dv, DV, UPCAST)
    o = tl.load(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + pos[:, None] * sot + offs_dv[None, :],
                mask=r_ok[:, None] & (offs_dv[None, :] < DV), other=0.0).to(tl.float32)
    delta = tl.sum(do.to(tl.float32) * o, 1)
    tl.store(DELTA + bh.to(tl.int64) * u + r, delta, mask=r_ok)
    lse2 = tl.load(LSE + bh.to(tl.int64) * u + r, mask=r_ok, other=0.0) * 1.4426950408889634
    K_head = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    V_head = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if CAUSAL:
        hi = tl.max(pos, 0) + 1
    else:
        hi = L_K
    for j0 in range(0, hi, BLOCK_N):
        offs_j = j0 + offs_n
        j_ok = offs_j < L_K
        k = _load_tile(K_head + offs_j[:, None].to(tl.int64) * skt + offs_d[None, :], j_ok, offs_d, D, UPCAST)
        v = _load_tile(V_head + offs_j[:, None].to(tl.int64) * svt + offs_dv[None, :], j_ok, offs_dv, DV, UPCAST)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        ok = j_ok[None, :] & r_ok[:, None]
        if CAUSAL:
            ok = ok & (offs_j[None, :] <= pos[:, None])
        s = tl.where(ok, s, float("-inf"))
        p = tl.math.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
    tl.store(DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + pos[:, None] * sdqt + offs_d[None, :],
             (dq * scale).to(DQ.dtype.element_ty), mask=r_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _bwd_lazy(DO, FLAG, LAZY, sdb, sdt, sdh, L_Q, L_K, H, Hk, G, lid,
              DV: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr):
    """LAZY[b, hk] = Σ_{g, i inactive} dO / L_K ([Dv], non-causal) or, per key j, Σ_{g, i ≥ j inactive} dO
    ([L_K, Dv], causal), float32."""
    b = lid // Hk
    hk = lid % Hk
    offs_t = tl.arange(0, BLOCK_T)
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    carry = tl.zeros([BLOCK_DV], tl.float32)
    n_blocks = tl.cdiv(L_Q, BLOCK_T)
    for i in range(n_blocks):
        if CAUSAL:
            t0 = (n_blocks - 1 - i) * BLOCK_T  # from the end: suffix sums
        else:
            t0 = i * BLOCK_T
        t = t0 + offs_t
        t_ok = t < L_Q
        x = tl.zeros([BLOCK_T, BLOCK_DV], tl.float32)
        for g in range(G):
            h = hk * G + g
            lazy = tl.load(FLAG + (b * H + h).to(tl.int64) * L_Q + t, mask=t_ok, other=1) == 0
            x += tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + t[:, None].to(tl.int64) * sdt
                         + offs_dv[None, :], mask=lazy[:, None] & dv_ok[None, :], other=0.0).to(tl.float32)
        block_sum = tl.sum(x, 0)
        if CAUSAL:
            suffix = carry[None, :] + block_sum[None, :] - tl.cumsum(x, 0) + x  # Σ over rows >= t
            tl.store(LAZY + lid.to(tl.int64) * L_K * DV + t[:, None].to(tl.int64) * DV + offs_dv[None, :], suffix,
                     mask=t_ok[:, None] & dv_ok[None, :])
        carry += block_sum
    if not CAUSAL:
        tl.store(LAZY + lid.to(tl.int64) * DV + offs_dv, carry / L_K, mask=dv_ok)


@triton.jit(do_not_specialize=["L_Q", "L_K", "u", "n_act", "n_act_total"])
def _ps_bwd_rows_kernel(Q, K, V, O, DO, LSE, IDX, DELTA, DQ, FLAG, LAZY,
                        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh, sdb, sdt, sdh,
                        sdqb, sdqt, sdqh, L_Q, L_K, u, H, Hk, G, n_act, n_act_total, qk_scale, scale,
                        D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                        CAUSAL: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Programs [0, n_act_total): Δ and dQ of the active rows; the rest: the lazy rows' dV term per (b, kv head)."""
    pid = tl.program_id(0)
    if pid < n_act_total:
        _bwd_active(Q, K, V, O, DO, LSE, IDX, DELTA, DQ, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
                    sob, sot, soh, sdb, sdt, sdh, sdqb, sdqt, sdqh, L_K, u, H, G, n_act, pid, qk_scale, scale,
                    D, DV, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, CAUSAL, PREC, UPCAST)
    else:
        _bwd_lazy(DO, FLAG, LAZY, sdb, sdt, sdh, L_Q, L_K, H, Hk, G, pid - n_act_total, DV, BLOCK_T, BLOCK_DV,
                  CAUSAL)


@triton.jit(do_not_specialize=["L_K", "u", "n_blocks"])
def _ps_bwd_dkdv_kernel(Q, K, V, DO, LSE, IDX, DELTA, LAZY, DK, DV_,
                        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                        sdkb, sdkt, sdkh, sdvb, sdvt, sdvh, L_K, u, H, Hk, G, n_blocks, qk_scale, scale,
                        D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
                        UPCAST: tl.constexpr):
    """dK, dV for BLOCK_N keys of one (b, kv head): Σ over the G query heads' active rows, plus the lazy term."""
    pid = tl.program_id(0)
    blk = pid % n_blocks
    bhk = pid // n_blocks
    b = bhk // Hk
    hk = bhk % Hk
    offs_j = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    j_ok = offs_j < L_K
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load_tile(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_j[:, None].to(tl.int64) * skt
                   + offs_d[None, :], j_ok, offs_d, D, UPCAST)
    v = _load_tile(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + offs_j[:, None].to(tl.int64) * svt
                   + offs_dv[None, :], j_ok, offs_dv, DV, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for g in range(G):
        h = hk * G + g
        bh = b * H + h
        for r0 in range(0, u, BLOCK_M):
            r, r_ok, pos = _active_rows(IDX, bh, r0 // BLOCK_M, u, BLOCK_M)
            q = _load_tile(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + pos[:, None] * sqt + offs_d[None, :],
                           r_ok, offs_d, D, UPCAST)
            do = _load_tile(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + pos[:, None] * sdt
                            + offs_dv[None, :], r_ok, offs_dv, DV, UPCAST)
            lse2 = tl.load(LSE + bh.to(tl.int64) * u + r, mask=r_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + bh.to(tl.int64) * u + r, mask=r_ok, other=0.0)
            s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # [keys, rows], log2 units
            ok = j_ok[:, None] & r_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_j[:, None] <= pos[None, :])
            s_t = tl.where(ok, s_t, float("-inf"))
            p_t = tl.math.exp2(s_t - lse2[None, :])
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PREC)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PREC)
    if CAUSAL:
        dv += tl.load(LAZY + bhk.to(tl.int64) * L_K * DV + offs_j[:, None].to(tl.int64) * DV + offs_dv[None, :],
                      mask=j_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    else:
        dv += tl.load(LAZY + bhk.to(tl.int64) * DV + offs_dv, mask=offs_dv < DV, other=0.0)[None, :]
    tl.store(DK + b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh + offs_j[:, None].to(tl.int64) * sdkt
             + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=j_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DV_ + b.to(tl.int64) * sdvb + hk.to(tl.int64) * sdvh + offs_j[:, None].to(tl.int64) * sdvt
             + offs_dv[None, :], dv.to(DV_.dtype.element_ty), mask=j_ok[:, None] & (offs_dv[None, :] < DV))


# --------------------------------------------------------------------------- launchers


def _rows(x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``[B, L, H, F]`` with a unit last-dim stride (copied only if needed) and its (b, t, h) strides."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x, (x.stride(0), x.stride(1), x.stride(2))


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


class _Problem:
    def __init__(self, q: Tensor, k: Tensor, v: Tensor, u: int, causal: bool, scale: float):
        self.B, self.L_Q, self.H, self.D = q.shape
        self.L_K, self.Hk, self.Dv = k.shape[1], k.shape[2], v.shape[3]
        self.G = self.H // self.Hk
        self.u = u
        self.causal = bool(causal)
        self.scale = float(scale)
        self.qk_scale = float(scale) * LOG2E
        self.BD, self.BDV = _pad(self.D), _pad(self.Dv)
        gpu = _common.compiles_for_gpu(q.device)
        self.upcast = not gpu and q.dtype == torch.bfloat16  # the interpreter's bf16 tl.dot is wrong
        self.prec = "ieee" if (q.dtype == torch.float32 or self.upcast) else "tf32"
        if BLOCKS is not None:
            self.block_m, self.block_n, self.block_t = BLOCKS[0], BLOCKS[1], BLOCKS[0]
            self.dkdv_m, self.warps = BLOCKS[0], 4
        elif not autotune.sets_active(q.device):  # the interpreter (unless a test forces a GPU config)
            self.block_m, self.block_n, self.block_t, self.dkdv_m, self.warps = 16, 16, 16, 16, 4
        elif q.dtype == torch.float32:  # "ieee" FMA products hold whole tiles in registers: small tiles, 8 warps
            self.block_m = min(32, max(16, triton.next_power_of_2(max(u, 1))))
            self.block_n = 32 if max(self.BD, self.BDV) <= 64 else 16
            self.block_t, self.dkdv_m, self.warps = 64, 16, 8
        else:
            self.block_m = min(64, max(16, triton.next_power_of_2(max(u, 1))))
            self.block_n, self.block_t, self.dkdv_m = 64, 64, 32
            self.warps = 4 if max(self.BD, self.BDV) <= 64 else 8
        self.n_act = triton.cdiv(u, self.block_m)
        self.dtype = q.dtype
        self.device = q.device
        self.pinned = BLOCKS is not None or not autotune.sets_active(q.device)

    def tune_set(self, kind: str) -> list:
        """The configs of launch ``kind`` ("sample", "fwd", "bwd_rows", "bwd_dkdv"), the default first; one
        pinned config under the interpreter / with ``BLOCKS``. Autotune sets (kernels/autotune.py), reasoning:
        * sample (a gather of U random key rows per query, memory-latency bound): 32 query rows, twice the
          programs (B·H·L_Q/64 is below a wave for short series or few heads);
        * fwd / bwd_rows: u ≈ 5·ln L active rows (~45 at L = 8192) make ONE 64-row block per (b, h), so at
          B·H = 64 the active programs are half a wave: half the rows per block doubles them; the forward also
          tries 128-key blocks at 8 warps (half the steps of the key loop it spends its time in);
        * bwd_dkdv ([keys, rows] tiles, loops over the G heads' active rows): 32 keys × 32 rows at 4 warps
          (twice the programs) and, up to head dim 64, 128 keys at 8 warps (half the re-reads of the active
          q/dO rows); float32: 16 × 16 at 4 warps, or the default keys with 16 rows at 4 warps.
        Dropped for spilling on sm_90 (Triton 3.9, tests/triton_compile.py): float32 fwd/rows at 4 warps (8–400
        B), bf16 rows with 128 keys (16 B at head dim 64), bf16 dK/dV with 128 keys at head dim 128 (8 B)."""
        if kind == "sample":
            default = autotune.Config(BLOCK_M=64 if not self.pinned else 16, num_warps=4)
        elif kind == "bwd_dkdv":
            default = autotune.Config(BLOCK_N=self.block_n, BLOCK_M=self.dkdv_m, num_warps=self.warps)
        else:
            default = autotune.Config(BLOCK_M=self.block_m, BLOCK_N=self.block_n, BLOCK_T=self.block_t,
                                      num_warps=self.warps)
        if self.pinned:
            return [default]
        half = self.dtype != torch.float32
        bm, bn, bt, w = self.block_m, self.block_n, self.block_t, self.warps
        C = autotune.Config
        if kind == "sample":
            alts = [C(BLOCK_M=32, num_warps=4)]
        elif kind == "bwd_dkdv":
            alts = ([C(BLOCK_N=32, BLOCK_M=32, num_warps=4)]
                    + ([C(BLOCK_N=128, BLOCK_M=32, num_warps=8)] if max(self.BD, self.BDV) <= 64 else [])
                    if half else [C(BLOCK_N=16, BLOCK_M=16, num_warps=4), C(BLOCK_N=bn, BLOCK_M=16, num_warps=4)])
        else:
            alts = [C(BLOCK_M=max(16, bm // 2), BLOCK_N=bn, BLOCK_T=bt, num_warps=w)]
            if half and kind == "fwd":
                alts.append(C(BLOCK_M=bm, BLOCK_N=128, BLOCK_T=bt, num_warps=8))
        return autotune.distinct([default] + alts)

    def launch(self, kind: str, run) -> None:
        """``run(config)`` with the tuned config of ``kind`` (see ``tune_set``)."""
        key = ("prob_sparse." + kind, str(self.dtype), self.BD, self.BDV, self.causal, self.G,
               autotune.bucket(self.u), autotune.bucket(self.L_Q), autotune.bucket(self.L_K))
        autotune.launch(key, self.tune_set(kind), run, self.device)

    def flags(self) -> dict:
        return dict(D=self.D, DV=self.Dv, BLOCK_D=self.BD, BLOCK_DV=self.BDV, CAUSAL=self.causal, PREC=self.prec,
                    UPCAST=self.upcast)


def _flags(index: Tensor, L_Q: int) -> Tensor:
    """int8 [B, H, L_Q]: 1 at the active rows."""
    flag = torch.zeros(index.shape[:2] + (L_Q,), dtype=torch.int8, device=index.device)
    return flag.scatter_(2, index, 1)


def prob_sparse_attention_fwd(q: Tensor, k: Tensor, v: Tensor, sample_index: Tensor, u: int, causal: bool,
                              scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (o [B, L_Q, H, Dv] in q.dtype, index [B, H, u] int64 sorted, lse [B, H, u] float32)."""
    p = _Problem(q, k, v, u, causal, scale)
    dev = q.device
    q, sq = _rows(q)
    k, sk = _rows(k)
    v, sv = _rows(v)
    if u > 0:
        U = sample_index.shape[1]
        si = sample_index.to(device=dev, dtype=torch.int64).contiguous()
        M = torch.empty((p.B, p.H, p.L_Q), dtype=torch.float32, device=dev)

        def sample(c):
            nb = triton.cdiv(p.L_Q, c.BLOCK_M)
            _ps_sample_kernel[(nb * p.B * p.H,)](q, k, si, M, *sq, *sk, p.L_Q, p.L_K, U, p.H, p.G, nb,
                                                D=p.D, BLOCK_M=c.BLOCK_M, BLOCK_D=p.BD, **c.options)
        p.launch("sample", sample)
        index = M.topk(u, dim=-1).indices.sort(dim=-1).values.contiguous()
    else:
        index = torch.empty((p.B, p.H, 0), dtype=torch.int64, device=dev)
    flag = _flags(index, p.L_Q)
    o = new_empty((p.B, p.L_Q, p.H, p.Dv), dtype=q.dtype, device=dev)
    lse = new_empty((p.B, p.H, u), dtype=torch.float32, device=dev)
    so = (o.stride(0), o.stride(1), o.stride(2))

    def fwd(c):  # the active-row block sets the number of active programs
        n_act = triton.cdiv(u, c.BLOCK_M)
        n_act_total = n_act * p.B * p.H
        _ps_fwd_kernel[(n_act_total + p.B * p.Hk,)](
            q, k, v, o, lse, index, flag, *sq, *sk, *sv, *so, p.L_Q, p.L_K, u, p.H, p.Hk, p.G, max(n_act, 1),
            n_act_total, p.qk_scale, BLOCK_M=c.BLOCK_M, BLOCK_N=c.BLOCK_N, BLOCK_T=c.BLOCK_T, **c.options,
            **p.flags())
    p.launch("fwd", fwd)
    return o, index, lse


def prob_sparse_attention_bwd(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, index: Tensor, lse: Tensor,
                              causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv) in the shapes and dtypes of q, k, v (contiguous)."""
    u = index.shape[-1]
    p = _Problem(q, k, v, u, causal, scale)
    dev = q.device
    q, sq = _rows(q)
    k, sk = _rows(k)
    v, sv = _rows(v)
    o, so = _rows(o)
    do, sd = _rows(do if do.dtype == o.dtype else do.to(o.dtype))
    index = index.contiguous()
    lse = lse.to(torch.float32).contiguous()
    flag = _flags(index, p.L_Q)
    delta = torch.empty((p.B, p.H, u), dtype=torch.float32, device=dev)
    lazy = torch.empty((p.B, p.Hk, p.L_K if p.causal else 1, p.Dv), dtype=torch.float32, device=dev)
    dq = torch.zeros((p.B, p.L_Q, p.H, p.D), dtype=q.dtype, device=dev)  # inactive rows: 0
    dk = new_empty((p.B, p.L_K, p.Hk, p.D), dtype=k.dtype, device=dev)
    dv = new_empty((p.B, p.L_K, p.Hk, p.Dv), dtype=v.dtype, device=dev)
    sdq = (dq.stride(0), dq.stride(1), dq.stride(2))
    sdk = (dk.stride(0), dk.stride(1), dk.stride(2))
    sdv = (dv.stride(0), dv.stride(1), dv.stride(2))

    def rows(c):
        n_act = triton.cdiv(u, c.BLOCK_M)
        n_act_total = n_act * p.B * p.H
        _ps_bwd_rows_kernel[(n_act_total + p.B * p.Hk,)](
            q, k, v, o, do, lse, index, delta, dq, flag, lazy, *sq, *sk, *sv, *so, *sd, *sdq,
            p.L_Q, p.L_K, u, p.H, p.Hk, p.G, max(n_act, 1), n_act_total, p.qk_scale, p.scale,
            BLOCK_M=c.BLOCK_M, BLOCK_N=c.BLOCK_N, BLOCK_T=c.BLOCK_T, **c.options, **p.flags())
    p.launch("bwd_rows", rows)

    def dkdv(c):
        nb = triton.cdiv(p.L_K, c.BLOCK_N)
        _ps_bwd_dkdv_kernel[(nb * p.B * p.Hk,)](
            q, k, v, do, lse, index, delta, lazy, dk, dv, *sq, *sk, *sv, *sd, *sdk, *sdv,
            p.L_K, u, p.H, p.Hk, p.G, nb, p.qk_scale, p.scale,
            BLOCK_N=c.BLOCK_N, BLOCK_M=c.BLOCK_M, **c.options, **p.flags())
    p.launch("bwd_dkdv", dkdv)
    return dq, dk, dv
