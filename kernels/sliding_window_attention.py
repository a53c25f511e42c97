"""Sliding-window attention (SPEC §2) for the ``triton`` backend: FlashAttention-2 style fused kernels.

Math. For query i and key j of the same sequence, s_ij = scale·q_i·k_j, allowed iff
``i − left ≤ j ≤ i + right`` (−1 = unbounded on that side) and j lies in i's sequence. Then

    lse_i = log Σ_{j allowed} exp(s_ij),   P_ij = exp(s_ij − lse_i),   o_i = Σ_j P_ij v_j.

GQA: query head h reads kv head h // G, G = H / Hk.

Forward (``_fwd_kernel``, one program per (query block of BLOCK_M rows, batch·head)). The program visits only
the keys [lo, hi) that some of its rows may attend: lo = max(seq start, i0 − left), hi = min(seq end,
i_last + right + 1) (the sequence edge on an unbounded side), BLOCK_N keys at a time, with the online softmax in
base 2 (log2 e folded into the score scale): running max m, running sum l = Σ 2^(s·c − m) and accumulator
acc = Σ 2^(s·c − m) v, rescaled by 2^(m_old − m_new) when the max grows; at the end o = acc / l and
lse = (m + log2 l)·ln 2. The key range is split (``_partition``) into

    front blocks [lo, mid)     masked   (the lower window edge cuts through them; at most ⌈BLOCK_M/BLOCK_N⌉)
    interior blocks [mid, back) UNMASKED (every key allowed for every row of the block: no compare, no where)
    back blocks [back, hi)     masked   (the upper window edge or the end of the sequence)

so cost is O(T·(left + right + BLOCK_M)·D) per head, never O(T²) for a bounded window, and full attention
(−1, −1) masks only the last, ragged key block. In masked blocks disallowed scores are set to −inf BEFORE the
exp, and a row that has seen no allowed key yet subtracts 0 instead of its (−inf) running max, so no
exp(−inf + inf) is ever formed (rows past the sequence end are computed on zero inputs and never stored).

Backward (FlashAttention-2, P recomputed from the saved lse). With Δ_i = Σ_d dO_i·O_i and dlse the cotangent
of lse (``None`` → 0)::

    dV_j = Σ_i P_ij dO_i,  dP_ij = dO_i·v_j,  dS_ij = P_ij (dP_ij − Δ_i + dlse_i),
    dQ_i = scale Σ_j dS_ij k_j,  dK_j = scale Σ_i dS_ij q_i

(softmax Jacobian: ∂o_i/∂s_ij = P_ij (v_j − o_i) and ∂lse_i/∂s_ij = P_ij; Σ_j P_ij dP_ij = dO_i·o_i = Δ_i).
* ``_bwd_preprocess_kernel``: delta_i = Δ_i − dlse_i (float32 [B, H, T]), so dS = P ⊙ (dP − delta).
* ``_bwd_dkdv_kernel``: one program per (key block of BLOCK_N keys, batch·kv head). It loops over the G query
  heads of its group and, for each, over the query blocks that see its keys (queries [j0 − right,
  j_last + left]: the same front/interior/back split with the roles of left and right swapped); dK, dV stay in
  float32 registers, so the GQA group sum needs no atomics and the result is deterministic.
* ``_bwd_dq_kernel``: one program per (query block, batch·head), visiting the same key blocks as the forward.

Packed sequences (``cu_seqlens``, B == 1). Programs are laid out over "slots": sequence n owns the slots
[cu_n // BLOCK + n, cu_n // BLOCK + n + ⌈L_n / BLOCK⌉) — disjoint, fewer than T // BLOCK + N in all — and a
program finds its sequence by a binary search over cu_seqlens inside the kernel (no host sync, no index
table); slots that fall past the end of their sequence (or in a zero-length one) return at once. Every key/query
range is clipped to the program's sequence, so no block attends across sequences.

Precision. Scores, softmax statistics and all accumulators are float32. ``tl.dot`` uses
``input_precision=FP32_DOT_PRECISION`` ("ieee") for float32 inputs so float32 results match float32 math
(TF32 would cost ~1e-3 relative error); float16/bfloat16 inputs go to the tensor cores as they are, with P and
dS cast to the input dtype for the second product (as FlashAttention does). Under the Triton interpreter
(CPU tensors, tests) bfloat16 tiles are upcast to float32 after the load (the interpreter's bf16 dot is wrong).

Blocking. Head dims are padded to BLOCK_D = next power of two ≥ max(16, D) (masked loads/stores when D is not a
power of two; D = 5 or 60 work). GPU tiles (``_HALF_TILES`` / ``_FP32_TILES``, per kernel and padded head dim)
were chosen by compiling every kernel for sm_90 and sm_80 with Triton 3.9 and reading ptxas' register use
(strides multiples of 16): no spills on sm_90 except ≤ 32 bytes in three float32 kernels, ≤ 120 bytes in a few
sm_80 kernels. float16/bfloat16: forward 128 × 64 (64-row blocks when the window spans
≤ 256 keys, where a 128-row block would score ~128 masked keys per row; 64 × 32 at head dim 256), dK/dV
128 keys × 32 queries at head dim 64 (re-chosen with Triton 3.6, the H100's: see ``_HALF_TILES``), 64 × 64 at
32, 64 × 16 at 128, dQ 64 × 64 (64 × 32, 32 × 32 for 128, 256); 4 warps up to head
dim 64, else 8; 3 stages (2 at 256). float32 ("ieee" FMA products keep whole operand tiles in registers):
tiles of 16–64 rows, mostly 8 warps, 2 stages. A launch that still runs out of shared memory retries with
fewer stages, then smaller tiles. Under the interpreter all tiles are 64 (``BLOCKS`` overrides everything,
for tests). Inputs may have any strides as long as the last dim is contiguous (otherwise the
launcher copies that tensor). Offsets that can exceed 2³¹ (batch, head, time starts) are int64.
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

try:  # where Triton reports a launch that needs more shared memory / registers than the GPU has
    from triton.runtime.errors import OutOfResources as _OutOfResources
except Exception:  # pragma: no cover - depends on the Triton version
    _OutOfResources = RuntimeError

FP32_DOT_PRECISION = "ieee"  # "tf32x3" is a faster near-fp32 alternative on Ampere/Hopper (not tested here)
HALF_DOT_PRECISION = "tf32"  # ignored by tl.dot for float16/bfloat16 operands
# Tile sizes for tests: (program block, loop block) used by every kernel when set, e.g. (16, 32).
BLOCKS: Optional[tuple[int, int]] = None
INTERPRETER_BLOCKS = (64, 64)

# sizes that vary from call to call: one compiled kernel for all their values (no %16 / ==1 variants)
_NO_SPECIALIZE = ["T", "n_slots", "left", "right"]

LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _locate(CU, slot, T, N, BLOCK: tl.constexpr, VARLEN: tl.constexpr, LOG_N: tl.constexpr):
    """Program slot -> (sequence start t0, sequence end t1, first row a0 of the block). ``a0 >= t1`` marks a
    slot with no rows (past the end of its sequence)."""
    if VARLEN:
        # n = (number of sequences whose first slot cu_n // BLOCK + n is <= slot) - 1, by bisection on [0, N)
        lo = slot * 0
        hi = lo + N
        for _ in tl.static_range(LOG_N):
            mid = (lo + hi) // 2
            first = tl.load(CU + mid) // BLOCK + mid
            active = lo < hi
            go_right = active & (first <= slot)
            go_left = active & (first > slot)
            lo = tl.where(go_right, mid + 1, lo)
            hi = tl.where(go_left, mid, hi)
        n = lo - 1
        t0 = tl.load(CU + n)
        t1 = tl.load(CU + n + 1)
        a0 = t0 + (slot - (t0 // BLOCK + n)) * BLOCK
    else:
        a0 = slot * BLOCK
        t0 = a0 * 0
        t1 = t0 + T
    return t0, t1, a0


@triton.jit
def _partition(a0, t0, t1, lo_off, hi_off, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
               BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Rows [a0, a_end) of one program may see the other axis at [lo, hi) = [a − lo_off, a + hi_off] over its
    rows a, clipped to the sequence [t0, t1) (an unbounded side is the sequence edge). Visited in BLOCK_B
    blocks from lo: ``n_front`` masked blocks from lo, ``n_mid`` unmasked from ``mid`` (entries allowed for
    every row), ``n_back`` masked from ``back`` (up to hi)."""
    a_end = tl.minimum(a0 + BLOCK_A, t1)
    if HAS_LO:
        lo = tl.maximum(t0, a0 - lo_off)
        full_lo = tl.maximum(lo, a_end - 1 - lo_off)  # allowed for the last row => for all rows
    else:
        lo = t0
        full_lo = t0
    if HAS_HI:
        hi = tl.minimum(t1, a_end + hi_off)
        full_hi = tl.minimum(hi, a0 + hi_off + 1)  # allowed for the first row => for all rows
    else:
        hi = t1
        full_hi = t1
    n_front = (full_lo - lo + BLOCK_B - 1) // BLOCK_B
    mid = lo + n_front * BLOCK_B
    n_mid = tl.maximum(full_hi - mid, 0) // BLOCK_B
    back = mid + n_mid * BLOCK_B
    n_back = (tl.maximum(hi - back, 0) + BLOCK_B - 1) // BLOCK_B
    return hi, lo, n_front, mid, n_mid, back, n_back


@triton.jit
def _load_rows(ptrs, rows, n_rows, cols, N_COLS: tl.constexpr, CHECK_ROWS: tl.constexpr,
               CHECK_COLS: tl.constexpr, UPCAST: tl.constexpr):
    """Load a [rows, cols] tile; zeros outside rows < n_rows / cols < N_COLS (checked only where needed)."""
    if CHECK_ROWS:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (cols[None, :] < N_COLS), other=0.0)
        else:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=cols[None, :] < N_COLS, other=0.0)
        else:
            x = tl.load(ptrs)
    if UPCAST:
        x = x.to(tl.float32)
    return x


# --------------------------------------------------------------------------- forward


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K_head, V_head, skt, svt, offs_m, offs_n, offs_d, offs_dv,
               start, n_blocks, hi, left, right, qk_scale,
               D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               BLOCK_DV: tl.constexpr, MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
               PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``n_blocks`` key blocks from ``start``; MASKED: edge blocks (window / sequence-end masks)."""
    for blk in range(n_blocks):
        j0 = start + blk * BLOCK_N
        offs_j = j0 + offs_n
        k_ptrs = K_head + j0.to(tl.int64) * skt + offs_n[:, None] * skt + offs_d[None, :]
        v_ptrs = V_head + j0.to(tl.int64) * svt + offs_n[:, None] * svt + offs_dv[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=(offs_j[:, None] < hi) & (offs_d[None, :] < D), other=0.0)
            v = tl.load(v_ptrs, mask=(offs_j[:, None] < hi) & (offs_dv[None, :] < DV), other=0.0)
        else:
            if D == BLOCK_D:
                k = tl.load(k_ptrs)
            else:
                k = tl.load(k_ptrs, mask=offs_d[None, :] < D, other=0.0)
            if DV == BLOCK_DV:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=offs_dv[None, :] < DV, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # log2 units
        if MASKED:
            ok = offs_j[None, :] < hi
            if HAS_LEFT:
                ok = ok & (offs_j[None, :] >= offs_m[:, None] - left)
            if HAS_RIGHT:
                ok = ok & (offs_j[None, :] <= offs_m[:, None] + right)
            s = tl.where(ok, s, float("-inf"))  # before any exp
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # row with no allowed key yet
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = m_new  # every entry allowed: finite
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)  # 0 while m_i is −inf
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _fwd_kernel(Q, K, V, O, LSE, CU,
                sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                T, H, G, N, n_slots, left, right, qk_scale,
                D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                VARLEN: tl.constexpr, LOG_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    slot = pid % n_slots
    bh = pid // n_slots
    b = bh // H
    h = bh % H
    hk = h // G
    t0, t1, i0 = _locate(CU, slot, T, N, BLOCK_M, VARLEN, LOG_N)
    if i0 >= t1:
        return
    offs_m = i0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    rows = tl.arange(0, BLOCK_M)

    q_ptrs = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + i0.to(tl.int64) * sqt \
        + rows[:, None] * sqt + offs_d[None, :]
    q = _load_rows(q_ptrs, offs_m, t1, offs_d, D, True, D != BLOCK_D, UPCAST)
    K_head = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    V_head = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    hi, lo, n_front, mid, n_mid, back, n_back = _partition(i0, t0, t1, left, right, HAS_LEFT, HAS_RIGHT,
                                                           BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, skt, svt, offs_m, offs_n, offs_d, offs_dv,
                               lo, n_front, hi, left, right, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                               True, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, skt, svt, offs_m, offs_n, offs_d, offs_dv,
                               mid, n_mid, hi, left, right, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                               False, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K_head, V_head, skt, svt, offs_m, offs_n, offs_d, offs_dv,
                               back, n_back, hi, left, right, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                               True, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)

    # every valid row saw at least its own key: l_i > 0; rows past t1 may have l_i = 0 and are not stored
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    row_ok = offs_m < t1
    o_ptrs = O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + i0.to(tl.int64) * sot \
        + rows[:, None] * sot + offs_dv[None, :]
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    lse = (m_i + tl.math.log2(l_safe)) * 0.6931471805599453
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, lse, mask=row_ok)


# --------------------------------------------------------------------------- backward


@triton.jit(do_not_specialize=["T", "n_slots"])
def _bwd_preprocess_kernel(O, DO, DLSE, DELTA, sob, sot, soh, sdb, sdt, sdh, T, H, n_slots,
                           DV: tl.constexpr, BLOCK: tl.constexpr, BLOCK_DV: tl.constexpr,
                           HAS_DLSE: tl.constexpr):
    """delta[b, h, i] = Σ_d dO·O − dlse (float32)."""
    pid = tl.program_id(0)
    slot = pid % n_slots
    bh = pid // n_slots
    b = bh // H
    h = bh % H
    offs_t = slot * BLOCK + tl.arange(0, BLOCK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask = (offs_t[:, None] < T) & (offs_dv[None, :] < DV)
    o = tl.load(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_t[:, None].to(tl.int64) * sot
                + offs_dv[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_t[:, None].to(tl.int64) * sdt
                 + offs_dv[None, :], mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + bh.to(tl.int64) * T + offs_t, mask=offs_t < T, other=0.0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * T + offs_t, delta, mask=offs_t < T)


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, sqt, sdt, offs_j, offs_m, offs_d, offs_dv,
                start, n_blocks, hi, left, right, qk_scale,
                D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_DV: tl.constexpr, MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``n_blocks`` query blocks from ``start`` for one query head. Scores are held transposed
    ([keys, queries]) so dK, dV accumulate with plain products."""
    for blk in range(n_blocks):
        i0 = start + blk * BLOCK_M
        offs_i = i0 + offs_m
        q_ptrs = Q_head + i0.to(tl.int64) * sqt + offs_m[:, None] * sqt + offs_d[None, :]
        do_ptrs = DO_head + i0.to(tl.int64) * sdt + offs_m[:, None] * sdt + offs_dv[None, :]
        if MASKED:
            q = tl.load(q_ptrs, mask=(offs_i[:, None] < hi) & (offs_d[None, :] < D), other=0.0)
            do = tl.load(do_ptrs, mask=(offs_i[:, None] < hi) & (offs_dv[None, :] < DV), other=0.0)
            lse2 = tl.load(LSE_head + offs_i, mask=offs_i < hi, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA_head + offs_i, mask=offs_i < hi, other=0.0)
        else:
            if D == BLOCK_D:
                q = tl.load(q_ptrs)
            else:
                q = tl.load(q_ptrs, mask=offs_d[None, :] < D, other=0.0)
            if DV == BLOCK_DV:
                do = tl.load(do_ptrs)
            else:
                do = tl.load(do_ptrs, mask=offs_dv[None, :] < DV, other=0.0)
            lse2 = tl.load(LSE_head + offs_i) * 1.4426950408889634
            delta = tl.load(DELTA_head + offs_i)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # [keys, queries], log2 units
        if MASKED:
            ok = offs_i[None, :] < hi
            if HAS_LEFT:
                ok = ok & (offs_j[:, None] >= offs_i[None, :] - left)
            if HAS_RIGHT:
                ok = ok & (offs_j[:, None] <= offs_i[None, :] + right)
            s_t = tl.where(ok, s_t, float("-inf"))  # before the exp
        p_t = tl.math.exp2(s_t - lse2[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
        ds_t = p_t * (dp_t - delta[None, :])  # dS = P ⊙ (dP − Δ + dlse)
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PREC)
    return dk, dv


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV_, CU,
                     sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                     sdkb, sdkt, sdkh, sdvb, sdvt, sdvh,
                     T, H, Hk, G, N, n_slots, left, right, qk_scale, scale,
                     D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_LEFT: tl.constexpr,
                     HAS_RIGHT: tl.constexpr, VARLEN: tl.constexpr, LOG_N: tl.constexpr, PREC: tl.constexpr,
                     UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    slot = pid % n_slots
    bhk = pid // n_slots
    b = bhk // Hk
    hk = bhk % Hk
    t0, t1, j0 = _locate(CU, slot, T, N, BLOCK_N, VARLEN, LOG_N)
    if j0 >= t1:
        return
    keys = tl.arange(0, BLOCK_N)
    offs_j = j0 + keys
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = _load_rows(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + j0.to(tl.int64) * skt
                   + keys[:, None] * skt + offs_d[None, :], offs_j, t1, offs_d, D, True, D != BLOCK_D, UPCAST)
    v = _load_rows(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + j0.to(tl.int64) * svt
                   + keys[:, None] * svt + offs_dv[None, :], offs_j, t1, offs_dv, DV, True, DV != BLOCK_DV,
                   UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    # queries that see key j: j − right <= i <= j + left  (lower side governed by right, upper by left)
    hi, lo, n_front, mid, n_mid, back, n_back = _partition(j0, t0, t1, right, left, HAS_RIGHT, HAS_LEFT,
                                                           BLOCK_N, BLOCK_M)
    for g in range(G):  # the query heads of this kv head: dK, dV summed over the group in registers
        h = hk * G + g
        Q_head = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        DO_head = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        LSE_head = LSE + (b * H + h).to(tl.int64) * T
        DELTA_head = DELTA + (b * H + h).to(tl.int64) * T
        dk, dv = _dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, sqt, sdt, offs_j, offs_m,
                             offs_d, offs_dv, lo, n_front, hi, left, right, qk_scale, D, DV, BLOCK_M, BLOCK_D,
                             BLOCK_DV, True, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
        dk, dv = _dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, sqt, sdt, offs_j, offs_m,
                             offs_d, offs_dv, mid, n_mid, hi, left, right, qk_scale, D, DV, BLOCK_M, BLOCK_D,
                             BLOCK_DV, False, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
        dk, dv = _dkdv_inner(dk, dv, k, v, Q_head, DO_head, LSE_head, DELTA_head, sqt, sdt, offs_j, offs_m,
                             offs_d, offs_dv, back, n_back, hi, left, right, qk_scale, D, DV, BLOCK_M, BLOCK_D,
                             BLOCK_DV, True, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
    row_ok = offs_j < t1
    tl.store(DK + b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh + j0.to(tl.int64) * sdkt
             + keys[:, None] * sdkt + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DV_ + b.to(tl.int64) * sdvb + hk.to(tl.int64) * sdvh + j0.to(tl.int64) * sdvt
             + keys[:, None] * sdvt + offs_dv[None, :], dv.to(DV_.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, K_head, V_head, skt, svt, offs_m, offs_n, offs_d, offs_dv,
              start, n_blocks, hi, left, right, qk_scale,
              D: tl.constexpr, DV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr, MASKED: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
              PREC: tl.constexpr, UPCAST: tl.constexpr):
    """``n_blocks`` key blocks from ``start`` (the forward's blocks), P recomputed from lse."""
    for blk in range(n_blocks):
        j0 = start + blk * BLOCK_N
        offs_j = j0 + offs_n
        k_ptrs = K_head + j0.to(tl.int64) * skt + offs_n[:, None] * skt + offs_d[None, :]
        v_ptrs = V_head + j0.to(tl.int64) * svt + offs_n[:, None] * svt + offs_dv[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=(offs_j[:, None] < hi) & (offs_d[None, :] < D), other=0.0)
            v = tl.load(v_ptrs, mask=(offs_j[:, None] < hi) & (offs_dv[None, :] < DV), other=0.0)
        else:
            if D == BLOCK_D:
                k = tl.load(k_ptrs)
            else:
                k = tl.load(k_ptrs, mask=offs_d[None, :] < D, other=0.0)
            if DV == BLOCK_DV:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=offs_dv[None, :] < DV, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        if MASKED:
            ok = offs_j[None, :] < hi
            if HAS_LEFT:
                ok = ok & (offs_j[None, :] >= offs_m[:, None] - left)
            if HAS_RIGHT:
                ok = ok & (offs_j[None, :] <= offs_m[:, None] + right)
            s = tl.where(ok, s, float("-inf"))  # before the exp
        p = tl.math.exp2(s - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])  # dS = P ⊙ (dP − Δ + dlse)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
    return dq


@triton.jit(do_not_specialize=_NO_SPECIALIZE)
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU,
                   sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sdqb, sdqt, sdqh,
                   T, H, G, N, n_slots, left, right, qk_scale, scale,
                   D: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                   VARLEN: tl.constexpr, LOG_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    slot = pid % n_slots
    bh = pid // n_slots
    b = bh // H
    h = bh % H
    hk = h // G
    t0, t1, i0 = _locate(CU, slot, T, N, BLOCK_M, VARLEN, LOG_N)
    if i0 >= t1:
        return
    rows = tl.arange(0, BLOCK_M)
    offs_m = i0 + rows
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = _load_rows(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + i0.to(tl.int64) * sqt
                   + rows[:, None] * sqt + offs_d[None, :], offs_m, t1, offs_d, D, True, D != BLOCK_D, UPCAST)
    do = _load_rows(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + i0.to(tl.int64) * sdt
                    + rows[:, None] * sdt + offs_dv[None, :], offs_m, t1, offs_dv, DV, True, DV != BLOCK_DV,
                    UPCAST)
    row_ok = offs_m < t1
    lse2 = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    K_head = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    V_head = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi, lo, n_front, mid, n_mid, back, n_back = _partition(i0, t0, t1, left, right, HAS_LEFT, HAS_RIGHT,
                                                           BLOCK_M, BLOCK_N)
    dq = _dq_inner(dq, q, do, lse2, delta, K_head, V_head, skt, svt, offs_m, offs_n, offs_d, offs_dv,
                   lo, n_front, hi, left, right, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                   True, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
    dq = _dq_inner(dq, q, do, lse2, delta, K_head, V_head, skt, svt, offs_m, offs_n, offs_d, offs_dv,
                   mid, n_mid, hi, left, right, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                   False, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
    dq = _dq_inner(dq, q, do, lse2, delta, K_head, V_head, skt, svt, offs_m, offs_n, offs_d, offs_dv,
                   back, n_back, hi, left, right, qk_scale, D, DV, BLOCK_N, BLOCK_D, BLOCK_DV,
                   True, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
    tl.store(DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + i0.to(tl.int64) * sdqt
             + rows[:, None] * sdqt + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


# --------------------------------------------------------------------------- launchers


def _rows(x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``[B, T, H, F]`` with a unit last-dim stride (copied only if needed) and its (b, t, h) strides."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x, (x.stride(0), x.stride(1), x.stride(2))


def _pad(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


class _Tiles:
    """One kernel's launch shape: program block ``a`` (rows it owns), loop block ``b``, warps, stages."""

    def __init__(self, a: int, b: int, num_warps: int, num_stages: int):
        self.a, self.b, self.num_warps, self.num_stages = a, b, num_warps, num_stages

    def smaller(self) -> Optional["_Tiles"]:
        """The next configuration to try after running out of shared memory / registers."""
        if self.num_stages > 1:
            return _Tiles(self.a, self.b, self.num_warps, self.num_stages - 1)
        if self.b > 16:
            return _Tiles(self.a, self.b // 2, self.num_warps, 2)
        if self.a > 16:
            return _Tiles(self.a // 2, self.b, self.num_warps, 2)
        return None


# GPU tiles (program block, loop block, num_warps, num_stages) per kernel and padded head dim (max of D, Dv),
# chosen so that ptxas (Triton 3.9, sm_90 and sm_80) reports no register spills with 16-byte aligned strides.
# float32 uses FMA ("ieee") products, which hold whole operand tiles in registers: smaller tiles, more warps.
_HALF_TILES = {
    "fwd": {32: (128, 64, 4, 3), 64: (128, 64, 4, 3), 128: (128, 64, 8, 3), 256: (64, 32, 8, 2)},
    # head dim 64: 128 keys × 32 queries, 2 stages. 64 × 64 × 3 stages (used on the H100 on 2026-11-23, backward
    # 0.80× FlexAttention's) spills 864 bytes per thread with Triton 3.6 on sm_90; this one spills nothing with
    # Triton 3.6 or 3.9 (tests/triton_compile.py). Chosen by compiling, not yet timed.
    "dkdv": {32: (64, 64, 4, 3), 64: (128, 32, 8, 2), 128: (64, 16, 8, 3), 256: (32, 16, 8, 2)},
    "dq": {32: (64, 64, 4, 3), 64: (64, 64, 4, 3), 128: (64, 32, 8, 3), 256: (32, 32, 8, 2)},
}
_FP32_TILES = {
    "fwd": {32: (64, 32, 4, 2), 64: (32, 32, 8, 2), 128: (32, 16, 8, 2), 256: (16, 32, 8, 1)},
    "dkdv": {32: (32, 32, 4, 2), 64: (32, 16, 8, 2), 128: (32, 16, 8, 2), 256: (16, 16, 8, 1)},
    "dq": {32: (64, 32, 4, 2), 64: (32, 32, 4, 2), 128: (32, 16, 8, 2), 256: (16, 16, 8, 1)},
}


def _gpu_config(kind: str, bd: int, bdv: int, dtype: torch.dtype, span: Optional[int]) -> _Tiles:
    """Tiles for a GPU launch; ``span`` = left + right + 1 for a window bounded on both sides, else None."""
    big = max(32, bd, bdv)
    a, b, warps, stages = (_FP32_TILES if dtype == torch.float32 else _HALF_TILES)[kind][big]
    if kind == "fwd" and a == 128 and span is not None and span <= 256:
        a = 64  # narrow window: each 128-row block would also score ~128 masked keys per row
    return _Tiles(a, b, warps, stages)


# Autotune sets (kernels/autotune.py): alternatives to the table's default per kernel and padded head dim, for
# float16/bfloat16 (float32 and other head dims: the default only). Each is compiled for sm_90 by
# tests/triton_compile.py (FLASHTS_COMPILE_ALL_CONFIGS=1 for the full sets).
# Every config here compiled without spills for sm_90 with Triton 3.9 (2026-12-03; dropped for spilling:
# fwd 64×64×4w×3 at head dim 128 (128 B), dK/dV 64×64×4w×2 at 64 (72 B), 64×32×8w×2 (8 B) and 128×32×8w×2
# (72 B) at 128).
_HALF_TUNE = {
    "fwd": {64: [(64, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 2)], 128: [(128, 32, 8, 2)]},
    "dkdv": {64: [(64, 32, 8, 2), (128, 64, 8, 2)], 128: [(64, 16, 8, 2)]},
    "dq": {64: [(64, 32, 8, 3), (128, 64, 8, 2)], 128: [(64, 64, 8, 2), (128, 32, 8, 2)]},
}


def _tune_set(kind: str, bd: int, bdv: int, dtype: torch.dtype, span: Optional[int]) -> list:
    """The default tiles first, then the distinct alternatives of ``_HALF_TUNE``."""
    default = _gpu_config(kind, bd, bdv, dtype, span)
    out, seen = [default], {(default.a, default.b, default.num_warps, default.num_stages)}
    if dtype != torch.float32:
        for a, b, w, st in _HALF_TUNE[kind].get(max(32, bd, bdv), []):
            if kind == "fwd" and a == 128 and span is not None and span <= 256:
                a = 64
            if (a, b, w, st) not in seen:
                seen.add((a, b, w, st))
                out.append(_Tiles(a, b, w, st))
    return out


def _tuned(kind: str, p: "_Problem", launch) -> None:
    """Launch with the autotuned tiles of ``kind`` (GPU) or the pinned tiles (interpreter, BLOCKS)."""
    if BLOCKS is not None or not _common.compiles_for_gpu(p.device):
        _launch(p.key(kind), _tiles(kind, p.BD, p.BDV, p.dtype, p.span, p.device), launch)
        return
    configs = _tune_set(kind, p.BD, p.BDV, p.dtype, p.span)
    key = ("swa",) + p.key(kind) + (autotune.bucket(p.T), p.span if p.span is None else autotune.bucket(p.span))
    autotune.launch(key, configs, lambda t: _launch(p.key(kind), t, launch), p.device)


def _tiles(kind: str, bd: int, bdv: int, dtype: torch.dtype, span: Optional[int], device: torch.device) -> _Tiles:
    if BLOCKS is not None:
        return _Tiles(BLOCKS[0], BLOCKS[1], 4, 1)
    if not _common.compiles_for_gpu(device):  # Triton interpreter
        return _Tiles(INTERPRETER_BLOCKS[0], INTERPRETER_BLOCKS[1], 4, 1)
    return _gpu_config(kind, bd, bdv, dtype, span)


_FALLBACK: dict = {}  # (kernel, shapes, requested tiles) -> smaller tiles that launched after running out of resources


def _launch(key: tuple, tiles: _Tiles, launch) -> None:
    """``launch(tiles)``, falling back to smaller tiles when the GPU runs out of shared memory or registers
    (remembered per ``key``, so the failing compile is paid once)."""
    key = key + (tiles.a, tiles.b, tiles.num_warps, tiles.num_stages)
    tiles = _FALLBACK.get(key, tiles)
    while True:
        try:
            launch(tiles)
            return
        except _OutOfResources:
            nxt = tiles.smaller()
            if nxt is None:
                raise
            tiles = _FALLBACK[key] = nxt


class _Problem:
    """Sizes, window flags and constexprs shared by the launchers of one call."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], left: int, right: int,
                 scale: float):
        self.B, self.T, self.H, self.D = q.shape
        self.Hk, self.Dv = k.shape[2], v.shape[3]
        self.G = self.H // self.Hk
        # a side reaching at least T − 1 steps is the same as unbounded (and keeps int32 index math in range)
        self.left = -1 if left < 0 or left >= self.T - 1 else int(left)
        self.right = -1 if right < 0 or right >= self.T - 1 else int(right)
        self.span = None if (self.left < 0 or self.right < 0) else self.left + self.right + 1
        self.scale = float(scale)
        self.qk_scale = float(scale) * LOG2E
        self.varlen = cu_seqlens is not None
        self.N = cu_seqlens.shape[0] - 1 if self.varlen else 1
        self.log_n = self.N.bit_length() if self.varlen else 0
        self.cu = cu_seqlens.to(torch.int32).contiguous() if self.varlen else None
        self.BD, self.BDV = _pad(self.D), _pad(self.Dv)
        self.dtype = q.dtype
        self.device = q.device
        self.prec = FP32_DOT_PRECISION if q.dtype == torch.float32 else HALF_DOT_PRECISION
        # the interpreter's bfloat16 tl.dot is wrong: upcast bf16 tiles after the load there
        self.upcast = not _common.compiles_for_gpu(q.device) and q.dtype == torch.bfloat16
        if self.upcast:
            self.prec = FP32_DOT_PRECISION

    def n_slots(self, block: int) -> int:
        return self.T // block + self.N if self.varlen else triton.cdiv(self.T, block)

    def flags(self) -> dict:
        return dict(D=self.D, DV=self.Dv, BLOCK_D=self.BD, BLOCK_DV=self.BDV, HAS_LEFT=self.left >= 0,
                    HAS_RIGHT=self.right >= 0, VARLEN=self.varlen, LOG_N=self.log_n, PREC=self.prec,
                    UPCAST=self.upcast)

    def key(self, kind: str) -> tuple:
        return (kind, self.BD, self.BDV, self.dtype, self.span is None, self.device.index)


def sliding_window_attention_fwd(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], left: int,
                                 right: int, scale: float) -> tuple[Tensor, Tensor]:
    """-> (o [B, T, H, Dv] in q.dtype, lse [B, H, T] float32)."""
    p = _Problem(q, k, v, cu_seqlens, left, right, scale)
    q, sq = _rows(q)
    k, sk = _rows(k)
    v, sv = _rows(v)
    o = new_empty((p.B, p.T, p.H, p.Dv), dtype=q.dtype, device=q.device)
    lse = new_empty((p.B, p.H, p.T), dtype=torch.float32, device=q.device)
    so = (o.stride(0), o.stride(1), o.stride(2))

    def launch(t: _Tiles):
        ns = p.n_slots(t.a)
        _fwd_kernel[(ns * p.B * p.H,)](
            q, k, v, o, lse, p.cu, *sq, *sk, *sv, *so,
            p.T, p.H, p.G, p.N, ns, max(p.left, 0), max(p.right, 0), p.qk_scale,
            BLOCK_M=t.a, BLOCK_N=t.b, num_warps=t.num_warps, num_stages=t.num_stages, **p.flags())

    _tuned("fwd", p, launch)
    return o, lse


def sliding_window_attention_bwd(do: Tensor, dlse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, o: Tensor,
                                 lse: Tensor, cu_seqlens: Optional[Tensor], left: int, right: int,
                                 scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (dq, dk, dv) in the dtypes and shapes of q, k, v; ``dlse`` may be None."""
    p = _Problem(q, k, v, cu_seqlens, left, right, scale)
    dev = q.device
    q, sq = _rows(q)
    k, sk = _rows(k)
    v, sv = _rows(v)
    o, so = _rows(o)
    do, sd = _rows(do if do.dtype == o.dtype else do.to(o.dtype))  # the products pair dO with v/q tiles
    lse = lse.to(torch.float32).contiguous()
    has_dlse = dlse is not None
    if has_dlse:
        dlse = dlse.to(torch.float32).contiguous()

    # delta = rowsum(dO ⊙ O) − dlse, float32 [B, H, T]
    delta = torch.empty((p.B, p.H, p.T), dtype=torch.float32, device=dev)
    pre_block = 64 if p.BDV <= 128 else 32
    ns = triton.cdiv(p.T, pre_block)
    _bwd_preprocess_kernel[(ns * p.B * p.H,)](
        o, do, dlse, delta, *so, *sd, p.T, p.H, ns,
        DV=p.Dv, BLOCK=pre_block, BLOCK_DV=p.BDV, HAS_DLSE=has_dlse, num_warps=4)

    dq = new_empty((p.B, p.T, p.H, p.D), dtype=q.dtype, device=dev)
    dk = new_empty((p.B, p.T, p.Hk, p.D), dtype=k.dtype, device=dev)
    dv = new_empty((p.B, p.T, p.Hk, p.Dv), dtype=v.dtype, device=dev)
    sdq = (dq.stride(0), dq.stride(1), dq.stride(2))
    sdk = (dk.stride(0), dk.stride(1), dk.stride(2))
    sdv = (dv.stride(0), dv.stride(1), dv.stride(2))
    wl, wr = max(p.left, 0), max(p.right, 0)

    def launch_dkdv(t: _Tiles):
        ns_k = p.n_slots(t.a)
        _bwd_dkdv_kernel[(ns_k * p.B * p.Hk,)](
            q, k, v, do, lse, delta, dk, dv, p.cu, *sq, *sk, *sv, *sd, *sdk, *sdv,
            p.T, p.H, p.Hk, p.G, p.N, ns_k, wl, wr, p.qk_scale, p.scale,
            BLOCK_N=t.a, BLOCK_M=t.b, num_warps=t.num_warps, num_stages=t.num_stages, **p.flags())

    def launch_dq(t: _Tiles):
        ns_q = p.n_slots(t.a)
        _bwd_dq_kernel[(ns_q * p.B * p.H,)](
            q, k, v, do, lse, delta, dq, p.cu, *sq, *sk, *sv, *sd, *sdq,
            p.T, p.H, p.G, p.N, ns_q, wl, wr, p.qk_scale, p.scale,
            BLOCK_M=t.a, BLOCK_N=t.b, num_warps=t.num_warps, num_stages=t.num_stages, **p.flags())

    _tuned("dkdv", p, launch_dkdv)
    _tuned("dq", p, launch_dq)
    return dq, dk, dv
