"""Aaren (SPEC §4) and Latte (SPEC §5) for the ``triton`` backend: one chunked prefix-scan core.

Math (shared by both ops). Per row (sequence, head) with logits a ``[T, L]``, mixing weights p ``[T, L]``,
values v ``[T, Dv]`` and the state (m, α, S) per latent l (running max, Σe^{a−m}, Σe^{a−m}·v)::

    M_{t,l} = max(m0_l, max_{s≤t} a_{s,l})                          (running max; carries no gradient)
    den_{t,l} = α0_l e^{m0_l−M_{t,l}} + Σ_{s≤t} e^{a_{s,l}−M_{t,l}},   num_{t,l} = the same with S0_l and ·v_s
    y_t = Σ_l p_{t,l} num_{t,l} / den_{t,l}                  final state = (M_{T−1}, den_{T−1}, num_{T−1})

Aaren: L = 1, a_t = scale·(q·k_t) (computed in the kernel from the k tile), p = 1. Latte causal: a = k (the
latent logits), p = softmax_l(q_t) (computed in the kernel). The state update of every chunk, the single-step
update of the decode kernel and the steps of the exact fallback all go through ``_combine`` — the associative
online-softmax combine m = max(m_A, m_B), α = α_A e^{m_A−m} + α_B e^{m_B−m}, S likewise — with ``_exp_diff``
forming e^{x−m} only for m ≥ x and giving 0 (never NaN) for x = −∞, so logits are masked BEFORE any exp.

Chunking. Time is cut into chunks of C = CHUNK steps (ragged last chunk masked: a = −∞, p = 0, v = 0).
Choice: ONE sequential pass per (sequence, head, Dv tile of BV columns) that loops over the chunks and keeps
the state (m [BL], α [BL], S [BL, BV]) in registers. The recurrence over chunks is sequential in any design
(a parallel "chunk summaries + scan" variant does the same sequential work plus a round trip of the states
through memory and an extra launch); time-series batches give B·H·⌈Dv/BV⌉ programs, enough to fill a GPU;
the one pass writes nothing but y and the final state. Per chunk:

1. chunk summary: c_max = max_s a, E_c = e^{a−c_max}, (c_max, Σ_s E_c, E_cᵀ v) → ``_combine`` into the state.
2. outputs, fast path (the matrix form, tensor cores for Latte): with r = max(m_in, c_max) (the max at the end
   of the chunk) E = e^{a−r} ≤ 1 is a ``[C, L]`` tile, den^r = cumsum_t E + α_in e^{m_in−r} (den in units of
   e^r), F = p / den^r and P = (F Eᵀ) masked to s ≤ t (masked after the product: F, E are finite), so
   y = P v + (F e^{m_in−r}) S_in: three products tl.dot(F, Eᵀ), tl.dot(P, v), tl.dot(F, S_in).
   F = c·e^{r−M_t} grows by the factor e^{r−M_t}, so the fast path is taken only when the running max rises by
   at most RISE_LIMIT (40) inside the chunk, i.e. r − max(m_in, a_0) ≤ RISE_LIMIT for every latent: F stays
   below e^40·p, den^r above e^−40·den, every product is a product of positive factors (relative rounding
   only) and terms that underflow are < e^−47 of the row's denominator. This is exact for every chunk of
   ordinary logits.
3. outputs, exact fallback (chunks where the max rises by more, e.g. logits of ±1e4): a per-position running
   max — the chunk is walked step by step with ``_combine`` (one step at a time, y_t = Σ_l p_t S_t/α_t), so
   every exponent is ≤ 0 whatever the logits. Rare for real data; exact and finite always.

Backward (by hand; maxima held fixed, the state (m, α, S) standing for (α e^m, S e^m)). With c = p/den,
z_{t,l} = dy_t·num_{t,l}/den_{t,l} and the cotangent (dS, dα) of the state LEAVING a chunk (referenced to
r = the max leaving it; (dS_T, dα_T) for the last chunk), in units of e^r (E, F, den^r as above)::

    dp_{t,l} = z_{t,l}
    dv_s     = Σ_{t≥s} P[t,s] dy_t + Σ_l E[s,l] dS_l                              = Pᵀdy + E dS
    da_{s,l} = E[s,l] (Σ_{t≥s} F[t,l] (dy_t·v_s − z_{t,l}) + dS_l·v_s + dα_l)
    dS_in    = e^{m_in−r} (Fᵀ dy + dS),   dα_in = e^{m_in−r} (dα − Σ_t F z)        (the reverse scan)

The reverse scan over chunks carries (dS, dα) with decay factors e^{m_in−r} ≤ 1; what is left at the start
is (dS0, dα0). In the fallback chunks the same is done one step at a time (a forward walk records M_t, den_t,
z_t; the reverse walk carries (dS, dα) referenced to M_t with factors e^{M_{t−1}−M_t} ≤ 1).
Aaren: dk_t = scale·da_t q, dq = scale·Σ_t da_t k_t (summed over the batch when q is ``[H, D]``).
Latte: dq = p ⊙ (dp − Σ_l p dp) (dp shifted by dp_{·,0} first so an l-independent part cancels exactly).

Latte bidirectional (``causal=False``): the per-latent softmax over time is a reduction — the same chunk
summaries combined over the whole sequence give (m, α, S), mean_l = S_l/α_l, then y = p·mean (a second pass).
Backward: G = Σ_t p_tᵀ dy_t, π = e^{k−m}/α, dp = dy·meanᵀ, dv = π G, dk = π ⊙ (v Gᵀ − Σ_d mean⊙G).

Kernels (every one takes int64 offsets for batch/time/head; memory O(T·(L+Dv)) plus O(T/C·L·Dv) states):

* ``_scan_fwd_kernel`` (grid (⌈Dv/BV⌉, N·H)): the one pass above; writes y and the final state. With
  STORE_OUT=False and STORE_CHUNKS=True it is the backward's recomputation of the state entering every chunk
  (stored to chunk "slots": sequence n owns slots [cu_n // C + n, ...), disjoint, < T // C + N in all).
* SCAN_MODE "chunked" (the alternative to the one pass; chosen by measurement, see ``python -m bench.tune``):
  ``_chunk_sum_kernel`` (grid (B·H·NS, ⌈Dv/BV⌉), every chunk in parallel) writes the chunk summaries,
  ``_state_scan_kernel`` (grid (⌈Dv/BV⌉, N·H)) scans them sequentially — only ``_combine`` per chunk — into
  the state entering every chunk (and the final state), ``_chunk_out_kernel`` (grid (B·H·NS, ⌈Dv/BV⌉))
  computes every chunk's outputs in parallel from its entering state. The backward uses the first two for its
  entering states, then the same split for the reverse pass: the cotangent entering a chunk is an affine map
  of the one leaving it, f ⊙ (dS, dα) + (G, g) with f = e^{m_in − r} (``_chunk_bwd`` with a zero cotangent
  gives (G, g)): ``_chunk_cot_kernel`` (every chunk in parallel), ``_cot_scan_kernel`` (the light reverse scan
  of the maps), ``_chunk_grads_kernel`` (dv, da, dp of every chunk in parallel). Costs the [NS, L, Dv] float32 states written and read twice; wins when B·H is too small to
  fill the GPU with the one pass. Packed sequences use the chunk slots and the in-kernel binary search over
  cu_seqlens of the linear-attention kernels (``_chunk_of_slot``).
* ``_decode_kernel`` (T == 1 without cu_seqlens, grid (⌈Dv/BV⌉, B·H)): one ``_combine`` step per row and
  latent, no chunk tiles.
* ``_scan_bwd_kernel`` (grid (⌈Dv/BV⌉, N·H)): chunks from the last to the first, from the stored entering
  states. dv and dS0 are exact per Dv tile; da, dp and dα0 get one partial per Dv tile ([NV, ...] float32,
  linear in the tile's columns; the final-state cotangent dα_T enters only tile 0).
* ``_bidir_fwd_kernel`` / ``_bidir_bwd_kernel`` (grid (⌈Dv/BV⌉, N·H)): Latte non-causal, 2 / 3 passes.
* ``_finish_kernel`` (grid (⌈T/C⌉, B·H)): sums the Dv-tile partials, Aaren: dk = scale·da q and a dq partial
  per time block (summed by the launcher: deterministic, no atomics); Latte: dq (softmax Jacobian), dk.

Precision. All arithmetic in float32 (loads upcast; states float32). ``tl.dot`` uses FP32_DOT_PRECISION
("ieee") for float32 inputs and HALF_DOT_PRECISION ("tf32", 10 mantissa bits like float16) for float16/bfloat16.

Blocking. C = CHUNK (16): [C, C] products for the masked intra-chunk part; a power of two ≥ 16 (tl.dot).
Latte: BL = next power of two ≥ max(16, L) (tensor-core products over latents; padded latents are masked:
a = −∞, p = 0). Aaren: BL = AAREN_LATENT_BLOCK (16: its single latent padded, the same tensor-core layout; 1
gives broadcast sums instead of dots, which Triton 3.6 miscompiles on sm_90). BK = next
power of two ≥ D (Aaren q·k, a row sum). BV = next power of two ≥ max(16, Dv), at most BV_MAX (64) and at most
STATE_TILE_MAX / BL (the [BL, BV] state tiles live in registers; more latents → narrower Dv tiles). num_warps:
4, or 8 when BL·BV ≥ 1024; the backward kernels of Latte use 8. These were chosen from sm_90 compiles of every
kernel variant (triton.compile for GPUTarget("cuda", 90, 32) works without a GPU; cuobjdump -res-usage):
C = 32 or 4 warps made the backward spill (255 registers); with the choices above nothing spills except
≤ 24 bytes in the float32 ("ieee") backward at L ≥ 64. These are the defaults; on a GPU the launches
of the one pass, its backward and the chunk-parallel kernels are autotuned over small sets (``_TUNE``, with
the reasoning; the in-place state and cotangent scans are not tuned).
q/k/v/do may have any strides with a unit last-dim stride (otherwise the launcher copies); states and Aaren's
q are made contiguous.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

import warnings

from flashts.kernels import autotune, occupancy
from flashts.kernels.linear_attention import _chunk_of_slot
from flashts.ops import _common
from flashts.ops._common import new_empty

# Time steps per chunk (a power of two ≥ 16: the [C, C] tl.dot products; the tests pin it to 16).
CHUNK = 16
# Largest Dv tile (power of two ≥ 16).
BV_MAX = 64
# How the causal scan crosses chunks: "one_pass" (one sequential program per (sequence, head, Dv tile) carrying
# the state in registers) or "chunked" (chunk summaries in parallel, a light sequential scan of the summaries
# into the state entering every chunk, then every chunk's outputs in parallel; also used by the backward to
# recompute the entering states). "chunked" fills the GPU when B·H is small, at the price of writing and
# reading the [NS, L, Dv] float32 chunk states. "auto" (default): the occupancy rule of kernels/occupancy.py
# (one pass when it has ≥ 2 programs per SM, else chunked; Dv tiles split while the grid under-fills).
SCAN_MODE = "auto"
# Aaren's latent block: its one latent padded to 16 (masked like Latte's padded latents, tensor-core products),
# the layout validated on an H100 with Triton 3.6. 1 (broadcast sums over [C, 1] tiles, no tl.dot) is exact
# under the interpreter and Triton 3.9 but Triton 3.6 miscompiles it on sm_90 (every chunk after the first
# came out wrong, and a tl.cumsum over [C, 1] hit an assertion in ScanOpToLLVM).
AAREN_LATENT_BLOCK = 16
# Largest state tile BL·BV (Latte with many latents gets narrower Dv tiles).
STATE_TILE_MAX = 2048
# Largest rise of the running max inside a chunk for the matrix-form fast path (see the module docstring).
RISE_LIMIT = 40.0
# tl.dot precision for float32 inputs and for float16/bfloat16 inputs ("ieee", "tf32" or "tf32x3").
FP32_DOT_PRECISION = "ieee"
HALF_DOT_PRECISION = "tf32"


# --------------------------------------------------------------------------- shared device helpers


@triton.jit
def _exp_diff(x, m):
    """e^{x − m} for m ≥ x (broadcasting); 0 where x = −∞, also where m = −∞ too (no NaN)."""
    return tl.exp(x - tl.where(m == float("-inf"), 0.0, m))


@triton.jit
def _combine(m_a, u_a, w_a, m_b, u_b, w_b):
    """The online-softmax combine of states A (earlier) and B: (max, Σe^{a−max}, Σe^{a−max}·v) per latent.
    m, u ``[BL]``, w ``[BL, BV]`` (B's w may broadcast, e.g. ``[1, BV]`` for one step)."""
    m = tl.maximum(m_a, m_b)
    f_a = _exp_diff(m_a, m)
    f_b = _exp_diff(m_b, m)
    return m, u_a * f_a + u_b * f_b, w_a * f_a[:, None] + w_b * f_b[:, None]


@triton.jit
def _mm(a, b, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """a ``[M, K]`` @ b ``[K, N]``: tl.dot, or a broadcast sum when a dim is below 16 (Aaren's single latent)."""
    if USE_DOT:
        out = tl.dot(a, b, input_precision=PREC)
    else:
        out = tl.sum(a[:, :, None] * b[None, :, :], 1)
    return out


@triton.jit
def _mm_nt(a, b, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """a ``[M, K]`` @ b ``[N, K]``ᵀ."""
    if USE_DOT:
        out = tl.dot(a, tl.trans(b), input_precision=PREC)
    else:
        out = tl.sum(a[:, None, :] * b[None, :, :], 2)
    return out


@triton.jit
def _mm_tn(a, b, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """a ``[K, M]``ᵀ @ b ``[K, N]``."""
    if USE_DOT:
        out = tl.dot(tl.trans(a), b, input_precision=PREC)
    else:
        out = tl.sum(a[:, :, None] * b[:, None, :], 0)
    return out


@triton.jit
def _row(x, sel):
    """Row of a ``[C, X]`` tile picked by the ``[C, 1]`` one-hot mask sel (finite values)."""
    return tl.sum(tl.where(sel, x, 0.0), 0)


@triton.jit
def _row_max(x, sel):
    """Row of a ``[C, X]`` tile that may hold −∞ (logits, maxima)."""
    return tl.max(tl.where(sel, x, float("-inf")), 0)


@triton.jit
def _sequence(cu, i_n, T, C: tl.constexpr, VARLEN: tl.constexpr):
    """Sequence i_n -> (batch row, bos, eos, its first chunk slot)."""
    if VARLEN:
        bos = tl.load(cu + i_n).to(tl.int64)
        eos = tl.load(cu + i_n + 1).to(tl.int64)
        i_b = i_n * 0
        first_slot = bos // C + i_n
    else:
        bos = (i_n * 0).to(tl.int64)
        eos = bos + T
        i_b = i_n
        first_slot = bos
    return i_b, bos, eos, first_slot


@triton.jit
def _logits(q_ptr, k_ptr, offs_t, mask_t, sqt, skt, offs_l, mask_l, offs_d, mask_d, scale, AAREN: tl.constexpr):
    """(a, p) ``[C, BL]`` tiles of the rows offs_t: logits (−∞ on masked rows and latents) and mixing weights
    (0 there). Aaren: a = scale·(q·k_t), p = 1 (latent 0; padded latents a = −∞, p = 0). Latte: a = k, p = softmax_l(q)."""
    if AAREN:
        kt = tl.load(k_ptr + offs_t[:, None] * skt + offs_d[None, :], mask=mask_t[:, None] & mask_d[None, :],
                     other=0.0).to(tl.float32)
        qv = tl.load(q_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        s = tl.sum(kt * qv[None, :], 1) * scale
        m2 = mask_t[:, None] & mask_l[None, :]          # latent 0 only (BL > 1 pads it like Latte's latents)
        a = tl.where(m2, s[:, None], float("-inf"))
        p = tl.where(m2, 1.0, 0.0)
    else:
        m2 = mask_t[:, None] & mask_l[None, :]
        a = tl.load(k_ptr + offs_t[:, None] * skt + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        a = tl.where(m2, a, float("-inf"))
        x = tl.load(q_ptr + offs_t[:, None] * sqt + offs_l[None, :], mask=m2, other=0.0).to(tl.float32)
        x = tl.where(mask_l[None, :], x, float("-inf"))
        e = tl.exp(x - tl.max(x, 1)[:, None])
        p = tl.where(m2, e / tl.sum(e, 1)[:, None], 0.0)
    return a, p


@triton.jit
def _load_rows(ptr, offs_t, mask_t, stride_t, offs_f, mask_f):
    """``[C, BF]`` float32 tile of rows offs_t and columns offs_f (0 outside the masks)."""
    m = mask_t[:, None] & mask_f[None, :]
    return tl.load(ptr + offs_t[:, None] * stride_t + offs_f[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _cumsum_t(e, offs_c, USE_DOT: tl.constexpr):
    """Inclusive prefix sum over time (axis 0) of a ``[C, BL]`` tile. Aaren (BL = 1, USE_DOT False) sums a
    masked ``[C, C, 1]`` broadcast instead of ``tl.cumsum``: Triton 3.6 miscompiles (or fails to lower, an
    assertion in ScanOpToLLVM) a scan over a ``[C, 1]`` tile on sm_90; 3.9 and the interpreter do not."""
    if USE_DOT:
        out = tl.cumsum(e, 0)
    else:
        causal = offs_c[:, None] >= offs_c[None, :]
        out = tl.sum(tl.where(causal[:, :, None], e[None, :, :], 0.0), 1)
    return out


@triton.jit
def _chunk_summary(a, vv, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """(max_s a, E_c = e^{a − max}, Σ_s E_c, E_cᵀ v) of one chunk (masked rows have a = −∞: they add 0)."""
    c_max = tl.max(a, 0)
    e_c = _exp_diff(a, c_max[None, :])
    return c_max, e_c, tl.sum(e_c, 0), _mm_tn(e_c, vv, USE_DOT, PREC)


@triton.jit
def _fast_ok(a, m_in, r, offs_c, mask_l, RISE_LIMIT: tl.constexpr):
    """Whether the running max rises by at most RISE_LIMIT inside the chunk for every latent."""
    a0 = _row_max(a, offs_c[:, None] == 0)
    rise = tl.where(mask_l, r, 0.0) - tl.where(mask_l, tl.maximum(m_in, a0), 0.0)   # padded latents: 0
    return tl.max(rise, 0) <= RISE_LIMIT


@triton.jit
def _chunk_output(a, p, vv, m_in, u_in, w_in, c_max, e_c, offs_c, mask_l,
                  C: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, RISE_LIMIT: tl.constexpr):
    """y ``[C, BV]`` of one chunk entered with the state (m_in, u_in, w_in): the matrix form (fast path) or,
    when the running max rises too much inside the chunk, the exact step-by-step walk."""
    r = tl.maximum(m_in, c_max)
    if _fast_ok(a, m_in, r, offs_c, mask_l, RISE_LIMIT):
        f_in = _exp_diff(m_in, r)
        e = e_c * _exp_diff(c_max, r)[None, :]                      # e^{a_s − r} ≤ 1
        den = _cumsum_t(e, offs_c, USE_DOT) + (u_in * f_in)[None, :]             # den_t in units of e^r
        F = p / tl.where(den > 0, den, 1.0)
        causal = offs_c[:, None] >= offs_c[None, :]
        P = tl.where(causal, _mm_nt(F, e, USE_DOT, PREC), 0.0)     # P[t, s] = Σ_l F[t,l] E[s,l], s ≤ t
        y = tl.dot(P, vv, input_precision=PREC) + _mm(F * f_in[None, :], w_in, USE_DOT, PREC)
    else:
        y = tl.zeros_like(vv)
        m = m_in
        u = u_in
        w = w_in
        for t in range(C):
            sel = offs_c[:, None] == t
            a_t = _row_max(a, sel)
            m, u, w = _combine(m, u, w, a_t, tl.where(a_t == float("-inf"), 0.0, 1.0), _row(vv, sel)[None, :])
            c_t = _row(p, sel) / tl.where(u > 0, u, 1.0)
            y = tl.where(sel, tl.sum(c_t[:, None] * w, 0)[None, :], y)
    return y


# --------------------------------------------------------------------------- forward kernels


@triton.jit
def _initial_state(m0, u0, w0, srow, offs_v, mask_l, mask_lv, Dv, BL: tl.constexpr, BV: tl.constexpr,
                   HAS_STATE: tl.constexpr):
    """The state (m [BL], α [BL], S [BL, BV]) of rows srow (float32): loaded, or empty (−∞, 0, 0)."""
    if HAS_STATE:
        m = tl.load(m0 + srow, mask=mask_l, other=float("-inf")).to(tl.float32)
        u = tl.load(u0 + srow, mask=mask_l, other=0.0).to(tl.float32)
        w = tl.load(w0 + srow[:, None] * Dv + offs_v[None, :], mask=mask_lv, other=0.0).to(tl.float32)
    else:
        m = tl.full([BL], float("-inf"), tl.float32)
        u = tl.zeros([BL], dtype=tl.float32)
        w = tl.zeros([BL, BV], dtype=tl.float32)
    return m, u, w


@triton.jit
def _slot_tiles(q, k, v, cu, pid, i_v, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
                T, H, L, D, Dv, N, NS, scale,
                C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, AAREN: tl.constexpr,
                VARLEN: tl.constexpr, LOG_N: tl.constexpr):
    """What every chunk-parallel kernel (SCAN_MODE "chunked", grid (B·H·NS, ⌈Dv/BV⌉)) starts from: the program's
    chunk slot, its rows [t0, eos), index/mask vectors, the slot's row offset crow in the [B, NS, H, L] chunk
    tensors, and its logits, mixing weights and value tiles. A slot past its sequence's end has t0 ≥ eos and
    all-false row masks (its loads touch no memory); the caller skips its work and stores."""
    i_bh = pid // NS
    slot = pid % NS
    i_b = i_bh // H
    h = i_bh % H
    i_n, t0, eos = _chunk_of_slot(cu, slot, i_b, T, N, C, VARLEN, LOG_N)
    offs_c = tl.arange(0, C)
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_l = offs_l < L
    mask_d = offs_d < D
    mask_v = offs_v < Dv
    offs_t = t0 + offs_c
    mask_t = offs_t < eos
    crow = ((i_b.to(tl.int64) * NS + slot) * H + h) * L + offs_l
    a, p = _logits(q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, k + i_b.to(tl.int64) * skb
                   + h.to(tl.int64) * skh, offs_t, mask_t, sqt, skt, offs_l, mask_l, offs_d, mask_d, scale, AAREN)
    vv = _load_rows(v + i_b.to(tl.int64) * svb + h.to(tl.int64) * svh, offs_t, mask_t, svt, offs_v, mask_v)
    return i_b, h, t0, eos, offs_c, offs_l, offs_v, offs_t, mask_l, mask_v, mask_t, crow, a, p, vv


@triton.jit
def _chunk_state(m_ch, u_ch, w_ch, crow, offs_v, mask_l, mask_v, Dv):
    """The state entering a chunk slot (written by ``_state_scan_kernel``): m, α [BL], S [BL, BV]."""
    m = tl.load(m_ch + crow, mask=mask_l, other=float("-inf"))
    u = tl.load(u_ch + crow, mask=mask_l, other=0.0)
    w = tl.load(w_ch + crow[:, None] * Dv + offs_v[None, :], mask=mask_l[:, None] & mask_v[None, :], other=0.0)
    return m, u, w




@triton.jit
def _scan_fwd_kernel(q, k, v, o, m0, u0, w0, m_T, u_T, w_T, m_ch, u_ch, w_ch, cu,
                     sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                     T, H, L, D, Dv, NS, scale,
                     C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     AAREN: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, RISE_LIMIT: tl.constexpr,
                     HAS_STATE: tl.constexpr, VARLEN: tl.constexpr, STORE_OUT: tl.constexpr,
                     STORE_CHUNKS: tl.constexpr, STORE_FINAL: tl.constexpr):
    """One pass over the chunks of one (sequence, head, Dv tile), the state (m, α, S) in registers.
    STORE_OUT: write y; STORE_CHUNKS: write the state entering every chunk to its slot of m_ch/u_ch
    [B, NS, H, L], w_ch [B, NS, H, L, Dv]; STORE_FINAL: write the final state to m_T/u_T [N, H, L],
    w_T [N, H, L, Dv]. m and α are written by the programs of Dv tile 0 only."""
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    h = i_nh % H
    i_b, bos, eos, first_slot = _sequence(cu, i_n, T, C, VARLEN)
    offs_c = tl.arange(0, C)
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_l = offs_l < L
    mask_d = offs_d < D
    mask_v = offs_v < Dv
    mask_lv = mask_l[:, None] & mask_v[None, :]
    mask_l0 = mask_l & (offs_l * 0 + i_v == 0)
    q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr = k + i_b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_ptr = v + i_b.to(tl.int64) * svb + h.to(tl.int64) * svh
    o_ptr = o + i_b.to(tl.int64) * sob + h.to(tl.int64) * soh
    srow = i_nh.to(tl.int64) * L + offs_l                            # state rows [N, H, L]
    m, u, w = _initial_state(m0, u0, w0, srow, offs_v, mask_l, mask_lv, Dv, BL, BV, HAS_STATE)
    n_chunks = (eos - bos + C - 1) // C
    for i in range(0, n_chunks):
        offs_t = bos + i * C + offs_c
        mask_t = offs_t < eos
        if STORE_CHUNKS:
            crow = ((i_b.to(tl.int64) * NS + first_slot + i) * H + h) * L + offs_l
            tl.store(m_ch + crow, m, mask=mask_l0)
            tl.store(u_ch + crow, u, mask=mask_l0)
            tl.store(w_ch + crow[:, None] * Dv + offs_v[None, :], w, mask=mask_lv)
        a, p = _logits(q_ptr, k_ptr, offs_t, mask_t, sqt, skt, offs_l, mask_l, offs_d, mask_d, scale, AAREN)
        vv = _load_rows(v_ptr, offs_t, mask_t, svt, offs_v, mask_v)
        c_max, e_c, c_sum, c_vsum = _chunk_summary(a, vv, USE_DOT, PREC)
        if STORE_OUT:
            y = _chunk_output(a, p, vv, m, u, w, c_max, e_c, offs_c, mask_l, C, USE_DOT, PREC, RISE_LIMIT)
            tl.store(o_ptr + offs_t[:, None] * sot + offs_v[None, :], y.to(o.dtype.element_ty),
                     mask=mask_t[:, None] & mask_v[None, :])
        m, u, w = _combine(m, u, w, c_max, c_sum, c_vsum)
    if STORE_FINAL:
        tl.store(m_T + srow, m, mask=mask_l0)
        tl.store(u_T + srow, u, mask=mask_l0)
        tl.store(w_T + srow[:, None] * Dv + offs_v[None, :], w, mask=mask_lv)


@triton.jit
def _chunk_sum_kernel(q, k, v, m_s, u_s, w_ch, cu,
                      sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
                      T, H, L, D, Dv, N, NS, scale,
                      C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      AAREN: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, VARLEN: tl.constexpr,
                      LOG_N: tl.constexpr):
    """SCAN_MODE "chunked", step 1 (grid (B·H·NS, ⌈Dv/BV⌉), one program per chunk slot, head and Dv tile):
    the chunk summary (max_s a, Σ_s e^{a−max}, Σ_s e^{a−max} v) into m_s/u_s [B, NS, H, L] (Dv tile 0) and
    w_ch [B, NS, H, L, Dv]. Slots past a sequence's end write nothing (never read)."""
    i_v = tl.program_id(1)
    (i_b, h, t0, eos, offs_c, offs_l, offs_v, offs_t, mask_l, mask_v, mask_t, crow, a, p, vv) = _slot_tiles(
        q, k, v, cu, tl.program_id(0), i_v, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
        T, H, L, D, Dv, N, NS, scale, C, BL, BK, BV, AAREN, VARLEN, LOG_N)
    if t0 < eos:
        c_max, e_c, c_sum, c_vsum = _chunk_summary(a, vv, USE_DOT, PREC)
        mask_l0 = mask_l & (offs_l * 0 + i_v == 0)
        tl.store(m_s + crow, c_max, mask=mask_l0)
        tl.store(u_s + crow, c_sum, mask=mask_l0)
        tl.store(w_ch + crow[:, None] * Dv + offs_v[None, :], c_vsum, mask=mask_l[:, None] & mask_v[None, :])


@triton.jit
def _state_scan_kernel(m0, u0, w0, m_s, u_s, m_ch, u_ch, w_ch, m_T, u_T, w_T, cu,
                       T, H, L, Dv, NS,
                       C: tl.constexpr, BL: tl.constexpr, BV: tl.constexpr,
                       HAS_STATE: tl.constexpr, VARLEN: tl.constexpr, STORE_FINAL: tl.constexpr):
    """SCAN_MODE "chunked", step 2 (grid (⌈Dv/BV⌉, N·H)): the sequential scan of the chunk summaries — only
    ``_combine`` on [BL, BV] tiles per chunk. Reads the summaries (m_s, u_s, w_ch) and writes the state
    entering every chunk to m_ch/u_ch (Dv tile 0) and w_ch (in place: each program reads its own columns of a
    slot before it writes them); optionally the final state."""
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    h = i_nh % H
    i_b, bos, eos, first_slot = _sequence(cu, i_n, T, C, VARLEN)
    offs_l = tl.arange(0, BL)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_l = offs_l < L
    mask_v = offs_v < Dv
    mask_lv = mask_l[:, None] & mask_v[None, :]
    mask_l0 = mask_l & (offs_l * 0 + i_v == 0)
    srow = i_nh.to(tl.int64) * L + offs_l
    m, u, w = _initial_state(m0, u0, w0, srow, offs_v, mask_l, mask_lv, Dv, BL, BV, HAS_STATE)
    n_chunks = (eos - bos + C - 1) // C
    for i in range(0, n_chunks):
        crow = ((i_b.to(tl.int64) * NS + first_slot + i) * H + h) * L + offs_l
        c_max = tl.load(m_s + crow, mask=mask_l, other=float("-inf"))
        c_sum = tl.load(u_s + crow, mask=mask_l, other=0.0)
        c_vsum = tl.load(w_ch + crow[:, None] * Dv + offs_v[None, :], mask=mask_lv, other=0.0)
        tl.store(m_ch + crow, m, mask=mask_l0)
        tl.store(u_ch + crow, u, mask=mask_l0)
        tl.store(w_ch + crow[:, None] * Dv + offs_v[None, :], w, mask=mask_lv)
        m, u, w = _combine(m, u, w, c_max, c_sum, c_vsum)
    if STORE_FINAL:
        tl.store(m_T + srow, m, mask=mask_l0)
        tl.store(u_T + srow, u, mask=mask_l0)
        tl.store(w_T + srow[:, None] * Dv + offs_v[None, :], w, mask=mask_lv)


@triton.jit
def _chunk_out_kernel(q, k, v, o, m_ch, u_ch, w_ch, cu,
                      sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                      T, H, L, D, Dv, N, NS, scale,
                      C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      AAREN: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, RISE_LIMIT: tl.constexpr,
                      VARLEN: tl.constexpr, LOG_N: tl.constexpr):
    """SCAN_MODE "chunked", step 3 (grid (B·H·NS, ⌈Dv/BV⌉)): the outputs of one chunk from the state entering
    it (``_chunk_output``: the matrix form, or the exact walk when the max rises too much)."""
    i_v = tl.program_id(1)
    (i_b, h, t0, eos, offs_c, offs_l, offs_v, offs_t, mask_l, mask_v, mask_t, crow, a, p, vv) = _slot_tiles(
        q, k, v, cu, tl.program_id(0), i_v, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
        T, H, L, D, Dv, N, NS, scale, C, BL, BK, BV, AAREN, VARLEN, LOG_N)
    if t0 < eos:
        m, u, w = _chunk_state(m_ch, u_ch, w_ch, crow, offs_v, mask_l, mask_v, Dv)
        c_max = tl.max(a, 0)
        e_c = _exp_diff(a, c_max[None, :])
        y = _chunk_output(a, p, vv, m, u, w, c_max, e_c, offs_c, mask_l, C, USE_DOT, PREC, RISE_LIMIT)
        o_ptr = o + i_b.to(tl.int64) * sob + h.to(tl.int64) * soh
        tl.store(o_ptr + offs_t[:, None] * sot + offs_v[None, :], y.to(o.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _decode_kernel(q, k, v, o, m0, u0, w0, m_T, u_T, w_T,
                   sqb, sqh, skb, skh, svb, svh, sob, soh,
                   H, L, D, Dv, scale,
                   BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, AAREN: tl.constexpr,
                   HAS_STATE: tl.constexpr):
    """T == 1: state = combine(state, (a, 1, v)), y = Σ_l p_l S_l/α_l, per (batch, head, Dv tile)."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    b = i_bh // H
    h = i_bh % H
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_l = offs_l < L
    mask_d = offs_d < D
    mask_v = offs_v < Dv
    mask_lv = mask_l[:, None] & mask_v[None, :]
    mask_l0 = mask_l & (offs_l * 0 + i_v == 0)
    q_ptr = q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr = k + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    if AAREN:
        kv = tl.load(k_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        qv = tl.load(q_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        a = tl.where(mask_l, tl.sum(kv * qv, 0) * scale, float("-inf"))
        p = tl.where(mask_l, 1.0, 0.0)
    else:
        a = tl.load(k_ptr + offs_l, mask=mask_l, other=0.0).to(tl.float32)
        a = tl.where(mask_l, a, float("-inf"))
        x = tl.load(q_ptr + offs_l, mask=mask_l, other=0.0).to(tl.float32)
        x = tl.where(mask_l, x, float("-inf"))
        e = tl.exp(x - tl.max(x, 0))
        p = tl.where(mask_l, e / tl.sum(e, 0), 0.0)
    vv = tl.load(v + b.to(tl.int64) * svb + h.to(tl.int64) * svh + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    srow = i_bh.to(tl.int64) * L + offs_l
    m, u, w = _initial_state(m0, u0, w0, srow, offs_v, mask_l, mask_lv, Dv, BL, BV, HAS_STATE)
    m, u, w = _combine(m, u, w, a, tl.where(mask_l, 1.0, 0.0), vv[None, :])
    y = tl.sum((p / tl.where(u > 0, u, 1.0))[:, None] * w, 0)
    tl.store(o + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_v, y.to(o.dtype.element_ty), mask=mask_v)
    tl.store(m_T + srow, m, mask=mask_l0)
    tl.store(u_T + srow, u, mask=mask_l0)
    tl.store(w_T + srow[:, None] * Dv + offs_v[None, :], w, mask=mask_lv)


@triton.jit
def _bidir_state(q_ptr, k_ptr, v_ptr, bos, eos, sqt, skt, svt, offs_c, offs_l, mask_l, offs_d, mask_d, offs_v,
                 mask_v, C: tl.constexpr, BL: tl.constexpr, BV: tl.constexpr, USE_DOT: tl.constexpr,
                 PREC: tl.constexpr):
    """(m, α, S) of the whole sequence: the chunk summaries combined from the empty state."""
    m = tl.full([BL], float("-inf"), tl.float32)
    u = tl.zeros([BL], dtype=tl.float32)
    w = tl.zeros([BL, BV], dtype=tl.float32)
    for t0 in range(bos, eos, C):
        offs_t = t0 + offs_c
        mask_t = offs_t < eos
        a, p = _logits(q_ptr, k_ptr, offs_t, mask_t, sqt, skt, offs_l, mask_l, offs_d, mask_d, 1.0, False)
        vv = _load_rows(v_ptr, offs_t, mask_t, svt, offs_v, mask_v)
        c_max, e_c, c_sum, c_vsum = _chunk_summary(a, vv, USE_DOT, PREC)
        m, u, w = _combine(m, u, w, c_max, c_sum, c_vsum)
    return m, u, w


@triton.jit
def _bidir_fwd_kernel(q, k, v, o, cu,
                      sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                      T, H, L, Dv,
                      C: tl.constexpr, BL: tl.constexpr, BV: tl.constexpr, USE_DOT: tl.constexpr,
                      PREC: tl.constexpr, VARLEN: tl.constexpr):
    """Latte non-causal, per (sequence, head, Dv tile): mean_l = S_l/α_l over the whole sequence, y = p·mean."""
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    h = i_nh % H
    i_b, bos, eos, _ = _sequence(cu, i_n, T, C, VARLEN)
    offs_c = tl.arange(0, C)
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, 16)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_l = offs_l < L
    mask_d = offs_d < 0
    mask_v = offs_v < Dv
    q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr = k + i_b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_ptr = v + i_b.to(tl.int64) * svb + h.to(tl.int64) * svh
    o_ptr = o + i_b.to(tl.int64) * sob + h.to(tl.int64) * soh
    m, u, w = _bidir_state(q_ptr, k_ptr, v_ptr, bos, eos, sqt, skt, svt, offs_c, offs_l, mask_l, offs_d, mask_d,
                           offs_v, mask_v, C, BL, BV, USE_DOT, PREC)
    mean = w / tl.where(u > 0, u, 1.0)[:, None]
    for t0 in range(bos, eos, C):
        offs_t = t0 + offs_c
        mask_t = offs_t < eos
        a, p = _logits(q_ptr, k_ptr, offs_t, mask_t, sqt, skt, offs_l, mask_l, offs_d, mask_d, 1.0, False)
        y = _mm(p, mean, USE_DOT, PREC)
        tl.store(o_ptr + offs_t[:, None] * sot + offs_v[None, :], y.to(o.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])


# --------------------------------------------------------------------------- backward kernels


@triton.jit
def _chunk_bwd(a, p, vv, dy, m_in, u_in, w_in, dw, du, offs_c, mask_l,
               C: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, RISE_LIMIT: tl.constexpr):
    """Backward through one chunk entered with the state (m_in, u_in, w_in), given the cotangent (dw, du) of the
    state leaving it (referenced to the max leaving it): -> (dv_c [C, BV], da_c [C, BL], z = dp [C, BL], and
    the cotangent (dw, du) of the state entering it). The map (dw, du) -> entering cotangent is linear with the
    per-latent factor e^{m_in − r}: entering = e^{m_in − r}·(dw, du) + (the result for zero (dw, du))."""
    causal = offs_c[:, None] >= offs_c[None, :]
    c_max = tl.max(a, 0)
    r = tl.maximum(m_in, c_max)                                 # the max leaving the chunk
    if _fast_ok(a, m_in, r, offs_c, mask_l, RISE_LIMIT):
        f_in = _exp_diff(m_in, r)
        e = _exp_diff(a, r[None, :])                            # E[s, l] = e^{a_s − r} ≤ 1
        den = _cumsum_t(e, offs_c, USE_DOT) + (u_in * f_in)[None, :]
        den = tl.where(den > 0, den, 1.0)
        F = p / den
        vd = tl.where(causal, tl.dot(dy, tl.trans(vv), input_precision=PREC), 0.0)   # dy_t·v_s, s ≤ t
        z = (_mm(vd, e, USE_DOT, PREC) + _mm_nt(dy, w_in, USE_DOT, PREC) * f_in[None, :]) / den
        P = tl.where(causal, _mm_nt(F, e, USE_DOT, PREC), 0.0)
        dv_c = tl.dot(tl.trans(P), dy, input_precision=PREC) + _mm(e, dw, USE_DOT, PREC)
        Fz = F * z
        # Σ_{t≥s} F[t,l] (dy_t·v_s − z_{t,l}) as two masked products (no subtraction of suffix totals)
        de = (_mm_tn(vd, F, USE_DOT, PREC) - _mm_tn(tl.where(causal, 1.0, 0.0), Fz, USE_DOT, PREC)
              + _mm_nt(vv, dw, USE_DOT, PREC) + du[None, :])
        da_c = e * de
        dw = f_in[:, None] * (_mm_tn(F, dy, USE_DOT, PREC) + dw)
        du = f_in * (du - tl.sum(Fz, 0))
    else:
        # exact walk: forward through the chunk recording M_t, den_t, z_t, then back carrying (dS, dα)
        # referenced to M_t, with factors e^{M_{t−1} − M_t} ≤ 1
        M = tl.zeros_like(a)
        den = tl.zeros_like(a) + 1.0
        z = tl.zeros_like(a)
        m = m_in
        u = u_in
        w = w_in
        for t in range(C):
            sel = offs_c[:, None] == t
            a_t = _row_max(a, sel)
            m, u, w = _combine(m, u, w, a_t, tl.where(a_t == float("-inf"), 0.0, 1.0), _row(vv, sel)[None, :])
            u_safe = tl.where(u > 0, u, 1.0)
            M = tl.where(sel, m[None, :], M)
            den = tl.where(sel, u_safe[None, :], den)
            z = tl.where(sel, (tl.sum(w * _row(dy, sel)[None, :], 1) / u_safe)[None, :], z)
        c = p / den
        dv_c = tl.zeros_like(vv)
        da_c = tl.zeros_like(a)
        for it2 in range(C):
            t = C - 1 - it2
            sel = offs_c[:, None] == t
            M_t = _row_max(M, sel)
            M_prev = tl.where(t == 0, m_in, _row_max(M, offs_c[:, None] == t - 1))
            c_t = _row(c, sel)
            dw = dw + c_t[:, None] * _row(dy, sel)[None, :]
            du = du - c_t * _row(z, sel)
            e_t = _exp_diff(_row_max(a, sel), M_t)
            dv_c = tl.where(sel, tl.sum(e_t[:, None] * dw, 0)[None, :], dv_c)
            da_c = tl.where(sel, (e_t * (tl.sum(dw * _row(vv, sel)[None, :], 1) + du))[None, :], da_c)
            g = _exp_diff(M_prev, M_t)
            dw = dw * g[:, None]
            du = du * g
    return dv_c, da_c, z, dw, du


@triton.jit
def _scan_bwd_kernel(q, k, v, do, m_ch, u_ch, w_ch, du_T, dw_T, dv, da_p, dp_p, du0_p, dw0, cu,
                     sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sdvb, sdvt, sdvh,
                     B, T, H, L, D, Dv, NS, N, scale,
                     C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     AAREN: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, RISE_LIMIT: tl.constexpr,
                     HAS_STATE: tl.constexpr, HAS_DU: tl.constexpr, HAS_DW: tl.constexpr, VARLEN: tl.constexpr):
    """Reverse pass over the chunks of one (sequence, head, Dv tile), carrying the cotangent (dS, dα) of the
    state leaving the chunk. Writes dv [B, T, H, Dv] (exact), the Dv-tile partials da_p / dp_p [NV, B, T, H, L]
    and du0_p [NV, N, H, L], and dS0 = dw0 [N, H, L, Dv] (exact; HAS_STATE)."""
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    h = i_nh % H
    i_b, bos, eos, first_slot = _sequence(cu, i_n, T, C, VARLEN)
    offs_c = tl.arange(0, C)
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_l = offs_l < L
    mask_d = offs_d < D
    mask_v = offs_v < Dv
    mask_lv = mask_l[:, None] & mask_v[None, :]
    q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr = k + i_b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_ptr = v + i_b.to(tl.int64) * svb + h.to(tl.int64) * svh
    do_ptr = do + i_b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
    dv_ptr = dv + i_b.to(tl.int64) * sdvb + h.to(tl.int64) * sdvh
    srow = i_nh.to(tl.int64) * L + offs_l
    # the cotangent of the final state; dα_T enters tile 0 only (da, dp, dα0 are summed over the tiles)
    if HAS_DW:
        dw = tl.load(dw_T + srow[:, None] * Dv + offs_v[None, :], mask=mask_lv, other=0.0).to(tl.float32)
    else:
        dw = tl.zeros([BL, BV], dtype=tl.float32)
    if HAS_DU:
        du = tl.load(du_T + srow, mask=mask_l & (offs_l * 0 + i_v == 0), other=0.0).to(tl.float32)
    else:
        du = tl.zeros([BL], dtype=tl.float32)
    n_chunks = (eos - bos + C - 1) // C
    for it in range(0, n_chunks):
        i = n_chunks - 1 - it
        offs_t = bos + i * C + offs_c
        mask_t = offs_t < eos
        crow = ((i_b.to(tl.int64) * NS + first_slot + i) * H + h) * L + offs_l
        m_in = tl.load(m_ch + crow, mask=mask_l, other=float("-inf"))
        u_in = tl.load(u_ch + crow, mask=mask_l, other=0.0)
        w_in = tl.load(w_ch + crow[:, None] * Dv + offs_v[None, :], mask=mask_lv, other=0.0)
        a, p = _logits(q_ptr, k_ptr, offs_t, mask_t, sqt, skt, offs_l, mask_l, offs_d, mask_d, scale, AAREN)
        vv = _load_rows(v_ptr, offs_t, mask_t, svt, offs_v, mask_v)
        dy = _load_rows(do_ptr, offs_t, mask_t, sdt, offs_v, mask_v)
        dv_c, da_c, z, dw, du = _chunk_bwd(a, p, vv, dy, m_in, u_in, w_in, dw, du, offs_c, mask_l,
                                           C, USE_DOT, PREC, RISE_LIMIT)
        tl.store(dv_ptr + offs_t[:, None] * sdvt + offs_v[None, :], dv_c.to(dv.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])
        prow = (((i_v * B + i_b).to(tl.int64) * T + offs_t) * H + h) * L
        pmask = mask_t[:, None] & mask_l[None, :]
        tl.store(da_p + prow[:, None] + offs_l[None, :], da_c, mask=pmask)
        if not AAREN:
            tl.store(dp_p + prow[:, None] + offs_l[None, :], z, mask=pmask)
    tl.store(du0_p + (i_v * N + i_n).to(tl.int64) * H * L + h * L + offs_l, du, mask=mask_l)
    if HAS_STATE:
        tl.store(dw0 + srow[:, None] * Dv + offs_v[None, :], dw, mask=mask_lv)


@triton.jit
def _chunk_bwd_inputs(q, k, v, do, m_ch, u_ch, w_ch, cu, pid, i_v,
                      sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                      T, H, L, D, Dv, N, NS, scale,
                      C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, AAREN: tl.constexpr,
                      VARLEN: tl.constexpr, LOG_N: tl.constexpr):
    """Everything one chunk slot's backward needs (chunked mode): its rows, tiles and entering state."""
    (i_b, h, t0, eos, offs_c, offs_l, offs_v, offs_t, mask_l, mask_v, mask_t, crow, a, p, vv) = _slot_tiles(
        q, k, v, cu, pid, i_v, sqb, sqt, sqh, skb, skt, skh, svb, svt, svh,
        T, H, L, D, Dv, N, NS, scale, C, BL, BK, BV, AAREN, VARLEN, LOG_N)
    m_in, u_in, w_in = _chunk_state(m_ch, u_ch, w_ch, crow, offs_v, mask_l, mask_v, Dv)
    dy = _load_rows(do + i_b.to(tl.int64) * sdb + h.to(tl.int64) * sdh, offs_t, mask_t, sdt, offs_v, mask_v)
    return (i_b, h, t0, eos, offs_c, offs_l, offs_v, offs_t, mask_l, mask_v, mask_t, crow, m_in, u_in, w_in,
            a, p, vv, dy)


@triton.jit
def _chunk_cot_kernel(q, k, v, do, m_ch, u_ch, w_ch, dw_ch, du_ch, f_ch, cu,
                      sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                      B, T, H, L, D, Dv, N, NS, scale,
                      C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                      AAREN: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, RISE_LIMIT: tl.constexpr,
                      VARLEN: tl.constexpr, LOG_N: tl.constexpr):
    """SCAN_MODE "chunked", backward step 1 (grid (B·H·NS, ⌈Dv/BV⌉)): each chunk's affine map of the state
    cotangent, entering = f ⊙ leaving + (G, g): G → dw_ch [B, NS, H, L, Dv], g → du_ch [NV, B, NS, H, L] (one
    partial per Dv tile, like da), f = e^{m_in − r} → f_ch [B, NS, H, L]."""
    i_v = tl.program_id(1)
    (i_b, h, t0, eos, offs_c, offs_l, offs_v, offs_t, mask_l, mask_v, mask_t, crow, m_in, u_in, w_in,
     a, p, vv, dy) = _chunk_bwd_inputs(q, k, v, do, m_ch, u_ch, w_ch, cu, tl.program_id(0), i_v,
                                       sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                                       T, H, L, D, Dv, N, NS, scale, C, BL, BK, BV, AAREN, VARLEN, LOG_N)
    if t0 < eos:
        zero_w = tl.zeros([BL, BV], dtype=tl.float32)
        zero_u = tl.zeros([BL], dtype=tl.float32)
        _, _, _, G, g = _chunk_bwd(a, p, vv, dy, m_in, u_in, w_in, zero_w, zero_u, offs_c, mask_l,
                                   C, USE_DOT, PREC, RISE_LIMIT)
        f = _exp_diff(m_in, tl.maximum(m_in, tl.max(a, 0)))
        tl.store(dw_ch + crow[:, None] * Dv + offs_v[None, :], G, mask=mask_l[:, None] & mask_v[None, :])
        tl.store(du_ch + i_v.to(tl.int64) * B * NS * H * L + crow, g, mask=mask_l)
        tl.store(f_ch + crow, f, mask=mask_l & (offs_l * 0 + i_v == 0))


@triton.jit
def _cot_scan_kernel(du_T, dw_T, dw_ch, du_ch, f_ch, du0_p, dw0, cu,
                     B, T, H, L, Dv, NS, N,
                     C: tl.constexpr, BL: tl.constexpr, BV: tl.constexpr, SUB: tl.constexpr,
                     HAS_STATE: tl.constexpr, HAS_DU: tl.constexpr, HAS_DW: tl.constexpr, VARLEN: tl.constexpr):
    """SCAN_MODE "chunked", backward step 2 (grid (⌈Dv/(SUB·BV)⌉·SUB, N·H)): the reverse scan of the chunks'
    affine maps from the final-state cotangent; writes the cotangent LEAVING every chunk over (G, g) in dw_ch /
    du_ch (each program reads its own slot columns before writing them) and the initial-state cotangent (du0_p
    per tile, dw0). The Dv tiles of the chunk kernels (SUB·BV columns; du_ch / du0_p hold one partial per such
    tile) are split into SUB programs of BV columns (occupancy rule: the grid fills the SMs); the dα part of the
    scan (independent of the columns) is done by the first sub-tile of each tile only."""
    i_v = tl.program_id(0)
    i_t = i_v // SUB                    # the chunk kernels' Dv tile (index of the du partials)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    h = i_nh % H
    i_b, bos, eos, first_slot = _sequence(cu, i_n, T, C, VARLEN)
    offs_l = tl.arange(0, BL)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_l = offs_l < L
    mask_v = offs_v < Dv
    mask_lv = mask_l[:, None] & mask_v[None, :]
    srow = i_nh.to(tl.int64) * L + offs_l
    mask_u = mask_l & (offs_l * 0 + i_v % SUB == 0)    # the dα part: first sub-tile only (no racing reads)
    if HAS_DW:
        dw = tl.load(dw_T + srow[:, None] * Dv + offs_v[None, :], mask=mask_lv, other=0.0).to(tl.float32)
    else:
        dw = tl.zeros([BL, BV], dtype=tl.float32)
    if HAS_DU:
        du = tl.load(du_T + srow, mask=mask_u & (offs_l * 0 + i_t == 0), other=0.0).to(tl.float32)
    else:
        du = tl.zeros([BL], dtype=tl.float32)
    du_tile = du_ch + i_t.to(tl.int64) * B * NS * H * L
    n_chunks = (eos - bos + C - 1) // C
    for it in range(0, n_chunks):
        i = n_chunks - 1 - it
        crow = ((i_b.to(tl.int64) * NS + first_slot + i) * H + h) * L + offs_l
        G = tl.load(dw_ch + crow[:, None] * Dv + offs_v[None, :], mask=mask_lv, other=0.0)
        g = tl.load(du_tile + crow, mask=mask_u, other=0.0)
        f = tl.load(f_ch + crow, mask=mask_l, other=0.0)
        tl.store(dw_ch + crow[:, None] * Dv + offs_v[None, :], dw, mask=mask_lv)
        tl.store(du_tile + crow, du, mask=mask_u)
        dw = f[:, None] * dw + G
        du = f * du + g
    tl.store(du0_p + (i_t * N + i_n).to(tl.int64) * H * L + h * L + offs_l, du, mask=mask_u)
    if HAS_STATE:
        tl.store(dw0 + srow[:, None] * Dv + offs_v[None, :], dw, mask=mask_lv)


@triton.jit
def _chunk_grads_kernel(q, k, v, do, m_ch, u_ch, w_ch, dw_ch, du_ch, dv, da_p, dp_p, cu,
                        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sdvb, sdvt, sdvh,
                        B, T, H, L, D, Dv, N, NS, scale,
                        C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        AAREN: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr, RISE_LIMIT: tl.constexpr,
                        VARLEN: tl.constexpr, LOG_N: tl.constexpr):
    """SCAN_MODE "chunked", backward step 3 (grid (B·H·NS, ⌈Dv/BV⌉)): dv, da (and dp) of one chunk from its
    entering state and the cotangent of the state leaving it."""
    i_v = tl.program_id(1)
    (i_b, h, t0, eos, offs_c, offs_l, offs_v, offs_t, mask_l, mask_v, mask_t, crow, m_in, u_in, w_in,
     a, p, vv, dy) = _chunk_bwd_inputs(q, k, v, do, m_ch, u_ch, w_ch, cu, tl.program_id(0), i_v,
                                       sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                                       T, H, L, D, Dv, N, NS, scale, C, BL, BK, BV, AAREN, VARLEN, LOG_N)
    if t0 < eos:
        dw = tl.load(dw_ch + crow[:, None] * Dv + offs_v[None, :], mask=mask_l[:, None] & mask_v[None, :], other=0.0)
        du = tl.load(du_ch + i_v.to(tl.int64) * B * NS * H * L + crow, mask=mask_l, other=0.0)
        dv_c, da_c, z, _, _ = _chunk_bwd(a, p, vv, dy, m_in, u_in, w_in, dw, du, offs_c, mask_l,
                                         C, USE_DOT, PREC, RISE_LIMIT)
        dv_ptr = dv + i_b.to(tl.int64) * sdvb + h.to(tl.int64) * sdvh
        tl.store(dv_ptr + offs_t[:, None] * sdvt + offs_v[None, :], dv_c.to(dv.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])
        prow = (((i_v * B + i_b).to(tl.int64) * T + offs_t) * H + h) * L
        pmask = mask_t[:, None] & mask_l[None, :]
        tl.store(da_p + prow[:, None] + offs_l[None, :], da_c, mask=pmask)
        if not AAREN:
            tl.store(dp_p + prow[:, None] + offs_l[None, :], z, mask=pmask)


@triton.jit
def _bidir_bwd_kernel(q, k, v, do, dv, dk_p, dp_p, cu,
                      sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh, sdvb, sdvt, sdvh,
                      B, T, H, L, Dv,
                      C: tl.constexpr, BL: tl.constexpr, BV: tl.constexpr, USE_DOT: tl.constexpr,
                      PREC: tl.constexpr, VARLEN: tl.constexpr):
    """Latte non-causal backward per (sequence, head, Dv tile): (m, α, S) → mean; G = Σ_t p_tᵀ dy_t; then
    dp = dy·meanᵀ, dv = π G, dk = π ⊙ (v Gᵀ − Σ_d mean⊙G), π = e^{k−m}/α (dk, dp: per-Dv-tile)."""
    i_v = tl.program_id(0)
    i_nh = tl.program_id(1)
    i_n = i_nh // H
    h = i_nh % H
    i_b, bos, eos, _ = _sequence(cu, i_n, T, C, VARLEN)
    offs_c = tl.arange(0, C)
    offs_l = tl.arange(0, BL)
    offs_d = tl.arange(0, 16)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_l = offs_l < L
    mask_d = offs_d < 0
    mask_v = offs_v < Dv
    q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr = k + i_b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_ptr = v + i_b.to(tl.int64) * svb + h.to(tl.int64) * svh
    do_ptr = do + i_b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
    dv_ptr = dv + i_b.to(tl.int64) * sdvb + h.to(tl.int64) * sdvh
    m, u, w = _bidir_state(q_ptr, k_ptr, v_ptr, bos, eos, sqt, skt, svt, offs_c, offs_l, mask_l, offs_d, mask_d,
                           offs_v, mask_v, C, BL, BV, USE_DOT, PREC)
    inv_u = 1.0 / tl.where(u > 0, u, 1.0)
    mean = w * inv_u[:, None]
    G = tl.zeros([BL, BV], dtype=tl.float32)
    for t0 in range(bos, eos, C):
        offs_t = t0 + offs_c
        mask_t = offs_t < eos
        a, p = _logits(q_ptr, k_ptr, offs_t, mask_t, sqt, skt, offs_l, mask_l, offs_d, mask_d, 1.0, False)
        G += _mm_tn(p, _load_rows(do_ptr, offs_t, mask_t, sdt, offs_v, mask_v), USE_DOT, PREC)
    mean_g = tl.sum(mean * G, 1)
    for t0 in range(bos, eos, C):
        offs_t = t0 + offs_c
        mask_t = offs_t < eos
        a, p = _logits(q_ptr, k_ptr, offs_t, mask_t, sqt, skt, offs_l, mask_l, offs_d, mask_d, 1.0, False)
        vv = _load_rows(v_ptr, offs_t, mask_t, svt, offs_v, mask_v)
        dy = _load_rows(do_ptr, offs_t, mask_t, sdt, offs_v, mask_v)
        pi = _exp_diff(a, m[None, :]) * inv_u[None, :]
        dv_c = _mm(pi, G, USE_DOT, PREC)
        dk_c = pi * (_mm_nt(vv, G, USE_DOT, PREC) - mean_g[None, :])
        dp_c = _mm_nt(dy, mean, USE_DOT, PREC)
        tl.store(dv_ptr + offs_t[:, None] * sdvt + offs_v[None, :], dv_c.to(dv.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])
        prow = (((i_v * B + i_b).to(tl.int64) * T + offs_t) * H + h) * L
        pmask = mask_t[:, None] & mask_l[None, :]
        tl.store(dk_p + prow[:, None] + offs_l[None, :], dk_c, mask=pmask)
        tl.store(dp_p + prow[:, None] + offs_l[None, :], dp_c, mask=pmask)


@triton.jit
def _finish_kernel(q, k, da_p, dp_p, dq, dk, dq_p,
                   sqb, sqt, sqh, skb, skt, skh, sdqb, sdqt, sdqh, sdkb, sdkt, sdkh,
                   T, H, L, D, NV, NT, pstride, scale,
                   C: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, AAREN: tl.constexpr):
    """Per (time block, batch·head): sum the Dv-tile partials of da (and dp), then Aaren: dk = scale·da q and
    the block's dq partial scale·Σ_t da_t k_t (dq_p [B, NT, H, D]); Latte: dk = da, dq = p ⊙ (dp − Σ_l p dp).
    pstride = B·T·H·L, the distance between two Dv-tile partials."""
    i_t = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    h = i_bh % H
    offs_t = (i_t * C).to(tl.int64) + tl.arange(0, C)
    mask_t = offs_t < T
    offs_l = tl.arange(0, BL)
    mask_l = offs_l < L
    pmask = mask_t[:, None] & mask_l[None, :]
    prow = ((i_b.to(tl.int64) * T + offs_t) * H + h) * L
    da = tl.zeros([C, BL], dtype=tl.float32)
    for j in range(0, NV):
        da += tl.load(da_p + j * pstride + prow[:, None] + offs_l[None, :], mask=pmask, other=0.0)
    q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr = k + i_b.to(tl.int64) * skb + h.to(tl.int64) * skh
    if AAREN:
        offs_d = tl.arange(0, BK)
        mask_d = offs_d < D
        qv = tl.load(q_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        kt = _load_rows(k_ptr, offs_t, mask_t, skt, offs_d, mask_d)
        da_t = tl.sum(da, 1)[:, None]                                  # [C, 1] (padded latents hold 0)
        dk_c = scale * da_t * qv[None, :]
        tl.store(dk + i_b.to(tl.int64) * sdkb + h.to(tl.int64) * sdkh + offs_t[:, None] * sdkt + offs_d[None, :],
                 dk_c.to(dk.dtype.element_ty), mask=mask_t[:, None] & mask_d[None, :])
        tl.store(dq_p + ((i_b.to(tl.int64) * NT + i_t) * H + h) * D + offs_d, scale * tl.sum(da_t * kt, 0),
                 mask=mask_d)
    else:
        dp = tl.zeros([C, BL], dtype=tl.float32)
        for j in range(0, NV):
            dp += tl.load(dp_p + j * pstride + prow[:, None] + offs_l[None, :], mask=pmask, other=0.0)
        x = tl.load(q_ptr + offs_t[:, None] * sqt + offs_l[None, :], mask=pmask, other=0.0).to(tl.float32)
        x = tl.where(mask_l[None, :], x, float("-inf"))
        e = tl.exp(x - tl.max(x, 1)[:, None])
        p = tl.where(pmask, e / tl.sum(e, 1)[:, None], 0.0)
        # shift by dp_{·,0} (Σ_l p = 1 makes it a no-op) so an l-independent part cancels exactly
        dp = dp - tl.sum(tl.where(offs_l[None, :] == 0, dp, 0.0), 1)[:, None]
        dq_c = p * (dp - tl.sum(p * dp, 1)[:, None])
        tl.store(dq + i_b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + offs_t[:, None] * sdqt + offs_l[None, :],
                 dq_c.to(dq.dtype.element_ty), mask=pmask)
        tl.store(dk + i_b.to(tl.int64) * sdkb + h.to(tl.int64) * sdkh + offs_t[:, None] * sdkt + offs_l[None, :],
                 da.to(dk.dtype.element_ty), mask=pmask)


# --------------------------------------------------------------------------- launchers


def _rows(x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``[B, T, H, F]`` with a unit last-dim stride (copied only if needed) and its (b, t, h) strides."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x, (x.stride(0), x.stride(1), x.stride(2))


class _Config:
    """Sizes, blocking and constexpr flags of one call. ``L`` = 1 for Aaren."""

    def __init__(self, k: Tensor, v: Tensor, L: int, D: int, cu_seqlens: Optional[Tensor], aaren: bool,
                 causal: bool = True):
        self.B, self.T, self.H = k.shape[:3]
        self.L, self.D, self.Dv = L, D, v.shape[-1]
        self.aaren = aaren
        self.varlen = cu_seqlens is not None
        self.N = self.B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        self.C = CHUNK
        self.NS = triton.cdiv(self.T, self.C) if cu_seqlens is None else self.T // self.C + self.N
        self.BL = AAREN_LATENT_BLOCK if aaren else max(16, triton.next_power_of_2(L))
        self.use_dot = self.BL >= 16
        self.BK = triton.next_power_of_2(D) if aaren else 16
        # the [BL, BV] state tiles stay within STATE_TILE_MAX elements (registers)
        bv_max = max(16, min(BV_MAX, STATE_TILE_MAX // self.BL))
        bv = max(16, min(triton.next_power_of_2(self.Dv), bv_max))
        # one pass or chunked, and the Dv tile, by the occupancy rule (kernels/occupancy.py)
        sms = occupancy.sm_count(k.device)
        if causal:
            self.launch = occupancy.choose(self.N * self.H, self.B * self.H * self.NS, self.Dv, bv, sms,
                                           mode=SCAN_MODE)
        else:  # the bidirectional kernels: one sequential grid (N·H, ⌈Dv/BV⌉), only the Dv split applies
            bv = occupancy.split_dv(self.N * self.H, self.Dv, bv, sms)
            nv = triton.cdiv(self.Dv, bv)
            self.launch = occupancy.Launch("one_pass", bv, self.N * self.H * nv, 0, self.N * self.H * nv)
        self.BV = self.launch.BV
        self.NV = triton.cdiv(self.Dv, self.BV)
        self.num_warps = 8 if self.BL * self.BV >= 1024 else 4
        self.bwd_warps = 8 if self.BL >= 16 else 4
        self.prec = FP32_DOT_PRECISION if k.dtype == torch.float32 else HALF_DOT_PRECISION
        self.dtype = k.dtype
        self.cu = cu_seqlens.to(torch.int32).contiguous() if self.varlen else k  # placeholder when not packed
        self.log_n = (self.N - 1).bit_length() if self.varlen else 0           # binary-search steps over cu
        self.chunked = self.launch.mode == "chunked"


# Autotune sets (kernels/autotune.py) of the tuned launches; the first config is the default (the offline
# choice above: C = CHUNK, num_warps from _Config, Triton's default 3 stages). Reasoning:
# * "fwd" (the forward one pass, ``_scan_fwd_kernel`` writing y): a sequential loop over chunks whose speed is
#   the latency of one chunk step, so the levers are fewer, longer steps (C = 2·CHUNK: half the steps, [2C, 2C]
#   intra-chunk products — it writes only y and the final state, so its chunk length is its own) and the
#   warps per step; 8 warps at C = 2·CHUNK give the larger tiles the threads they need.
# * "recompute" (the backward's pass storing the entering states) and "bwd" (``_scan_bwd_kernel``): their
#   chunks are the chunk slots of the states, so C stays; the levers are warps (the backward's tiles are
#   larger: 4 warps spilled at L ≥ 16 in the first compiles, hence 8 by default, so the backward only tries
#   the pipelining depth: 2 stages, fewer buffered loads, more registers left for the state tiles).
# * "chunk_*" (SCAN_MODE "chunked", one chunk per program, no loop to pipeline): warps only.
# Configs that spill on sm_90 are dropped from the sets (tests/triton_compile.py; see the README's allowance):
# "recompute" at 8 warps where the default has 4 (Aaren, 8 B); float32 "fwd" at 8 warps and CHUNK steps where the
# default has 4 (Aaren, 8 B).
_TUNE = {
    "fwd": lambda C, w: [(C, w, 3), (2 * C, 8, 3), (C, 12 - w, 3)],
    "recompute": lambda C, w: [(C, w, 3), (C, 4, 3) if w == 8 else (C, w, 2)],
    "bwd": lambda C, w: [(C, w, 3), (C, w, 2)],
    "chunk_sum": lambda C, w: [(C, w, 3), (C, 12 - w, 3)],
    "chunk_out": lambda C, w: [(C, w, 3), (C, 12 - w, 3)],
    "chunk_cot": lambda C, w: [(C, w, 3), (C, 12 - w, 3)],
    "chunk_grads": lambda C, w: [(C, w, 3), (C, 12 - w, 3)],
}
_BWD_ROLES = ("bwd", "chunk_cot", "chunk_grads")


def _tune_set(role: str, cfg: "_Config") -> list:
    """The configs of a tuned launch (``role`` in _TUNE): autotune.Config(C, num_warps, num_stages)."""
    w = cfg.bwd_warps if role in _BWD_ROLES else cfg.num_warps
    out = [autotune.Config(C=c, num_warps=nw, num_stages=st) for c, nw, st in _TUNE[role](cfg.C, w)]
    if role == "fwd" and cfg.dtype == torch.float32 and w == 4:
        out = [c for c in out if not (c.C == cfg.C and c.num_warps == 8)]   # spills (see above)
    return autotune.distinct(out)


def _tuned(role: str, cfg: "_Config", run, device) -> None:
    """``run(config)`` with the tuned config of ``role`` (GPU), or the default (interpreter: pinned)."""
    configs = _tune_set(role, cfg)
    if not autotune.sets_active(device):
        configs = configs[:1]
    key = ("prefix_scan." + role, str(cfg.dtype), cfg.aaren, cfg.varlen, cfg.C, cfg.BL, cfg.BK, cfg.BV,
           autotune.bucket(cfg.T), autotune.bucket(cfg.N * cfg.H))
    autotune.launch(key, configs, run, device)


def _state(x: Optional[Tensor], shape) -> Optional[Tensor]:
    return None if x is None else x.to(torch.float32).reshape(shape).contiguous()


def _scan_forward(cfg: _Config, q, sq, k, v, m0, u0, w0, scale):
    """Causal forward of both ops: o [B, T, H, Dv] in k.dtype, final state [N, H, L], [N, H, L], [N, H, L, Dv]."""
    B, T, H, L, Dv, N = cfg.B, cfg.T, cfg.H, cfg.L, cfg.Dv, cfg.N
    k, sk = _rows(k)
    v, sv = _rows(v)
    dev = k.device
    o = new_empty((B, T, H, Dv), dtype=k.dtype, device=dev)
    so = (o.stride(0), o.stride(1), o.stride(2))
    m_T = new_empty((N, H, L), dtype=torch.float32, device=dev)
    u_T = new_empty((N, H, L), dtype=torch.float32, device=dev)
    w_T = new_empty((N, H, L, Dv), dtype=torch.float32, device=dev)
    has_state = m0 is not None
    m0, u0, w0 = (m0, u0, w0) if has_state else (m_T, u_T, w_T)
    if T == 1 and not cfg.varlen:
        _decode_kernel[(cfg.NV, B * H)](
            q, k, v, o, m0, u0, w0, m_T, u_T, w_T, sq[0], sq[2], sk[0], sk[2], sv[0], sv[2], so[0], so[2],
            H, L, cfg.D, Dv, scale,
            BL=cfg.BL, BK=cfg.BK, BV=cfg.BV, AAREN=cfg.aaren, HAS_STATE=has_state, num_warps=cfg.num_warps)
    elif cfg.chunked:
        m_ch, u_ch, w_ch = _entering_states(cfg, q, sq, k, sk, v, sv, m0, u0, w0, has_state, scale,
                                            final=(m_T, u_T, w_T))
        if cfg.NS > 0:
            _tuned("chunk_out", cfg, lambda c: _chunk_out_kernel[(B * H * cfg.NS, cfg.NV)](
                q, k, v, o, m_ch, u_ch, w_ch, cfg.cu, *sq, *sk, *sv, *so, T, H, L, cfg.D, Dv, N, cfg.NS, scale,
                C=cfg.C, BL=cfg.BL, BK=cfg.BK, BV=cfg.BV, AAREN=cfg.aaren, USE_DOT=cfg.use_dot, PREC=cfg.prec,
                RISE_LIMIT=RISE_LIMIT, VARLEN=cfg.varlen, LOG_N=cfg.log_n, **c.options), dev)
    else:
        # the one pass writes y and the final state only, so its chunk length is the config's own (c.C)
        _tuned("fwd", cfg, lambda c: _scan_fwd_kernel[(cfg.NV, N * H)](
            q, k, v, o, m0, u0, w0, m_T, u_T, w_T, m_T, u_T, w_T, cfg.cu, *sq, *sk, *sv, *so,
            T, H, L, cfg.D, Dv, triton.cdiv(T, c.C), scale,
            C=c.C, BL=cfg.BL, BK=cfg.BK, BV=cfg.BV, AAREN=cfg.aaren, USE_DOT=cfg.use_dot, PREC=cfg.prec,
            RISE_LIMIT=RISE_LIMIT, HAS_STATE=has_state, VARLEN=cfg.varlen, STORE_OUT=True, STORE_CHUNKS=False,
            STORE_FINAL=True, **c.options), dev)
    return o, m_T, u_T, w_T


def _entering_states(cfg: _Config, q, sq, k, sk, v, sv, m0, u0, w0, has_state: bool, scale, final=None):
    """SCAN_MODE "chunked": the state entering every chunk, m_ch/u_ch [B, NS, H, L], w_ch [B, NS, H, L, Dv]
    (chunk summaries in parallel, then their sequential scan); ``final`` = (m_T, u_T, w_T) to fill, or None."""
    B, T, H, L, Dv, N, NS = cfg.B, cfg.T, cfg.H, cfg.L, cfg.Dv, cfg.N, cfg.NS
    dev = k.device
    m_ch = new_empty((B, NS, H, L), dtype=torch.float32, device=dev)
    u_ch = new_empty((B, NS, H, L), dtype=torch.float32, device=dev)
    w_ch = new_empty((B, NS, H, L, Dv), dtype=torch.float32, device=dev)
    m_s = new_empty((B, NS, H, L), dtype=torch.float32, device=dev)
    u_s = new_empty((B, NS, H, L), dtype=torch.float32, device=dev)
    if NS > 0:
        _tuned("chunk_sum", cfg, lambda c: _chunk_sum_kernel[(B * H * NS, cfg.NV)](
            q, k, v, m_s, u_s, w_ch, cfg.cu, *sq, *sk, *sv, T, H, L, cfg.D, Dv, N, NS, scale,
            C=cfg.C, BL=cfg.BL, BK=cfg.BK, BV=cfg.BV, AAREN=cfg.aaren, USE_DOT=cfg.use_dot, PREC=cfg.prec,
            VARLEN=cfg.varlen, LOG_N=cfg.log_n, **c.options), dev)
    m_T, u_T, w_T = final if final is not None else (m_ch, u_ch, w_ch)
    # the light sequential scan gets its own Dv tile, split until its (⌈Dv/BV⌉, N·H) grid fills the SMs
    bv_scan = occupancy.split_dv(N * H, Dv, cfg.BV, occupancy.sm_count(k.device))
    _state_scan_kernel[(triton.cdiv(Dv, bv_scan), N * H)](
        m0 if has_state else m_ch, u0 if has_state else u_ch, w0 if has_state else w_ch, m_s, u_s,
        m_ch, u_ch, w_ch, m_T, u_T, w_T, cfg.cu, T, H, L, Dv, NS,
        C=cfg.C, BL=cfg.BL, BV=bv_scan, HAS_STATE=has_state, VARLEN=cfg.varlen, STORE_FINAL=final is not None,
        num_warps=cfg.num_warps)
    return m_ch, u_ch, w_ch


def _scan_backward(cfg: _Config, q, sq, k, v, do, m0, u0, w0, du_T, dw_T, scale):
    """Causal backward of both ops up to the Dv-tile partials.

    Returns dv (v.dtype), da_p, dp_p [NV, B, T, H, L] float32 (dp_p None for Aaren), du0 [N, H, L] (float32,
    summed over the tiles) and dw0 [N, H, L, Dv] (None without an initial state)."""
    B, T, H, L, Dv, N, NS, NV = cfg.B, cfg.T, cfg.H, cfg.L, cfg.Dv, cfg.N, cfg.NS, cfg.NV
    v_dtype = v.dtype
    k, sk = _rows(k)
    v, sv = _rows(v)
    do, sd = _rows(do)
    dev = k.device
    has_state = m0 is not None
    common = dict(C=cfg.C, BL=cfg.BL, BK=cfg.BK, BV=cfg.BV, AAREN=cfg.aaren, USE_DOT=cfg.use_dot, PREC=cfg.prec,
                  RISE_LIMIT=RISE_LIMIT, HAS_STATE=has_state, VARLEN=cfg.varlen)
    # 1. the state entering every chunk
    if cfg.chunked:
        m_ch, u_ch, w_ch = _entering_states(cfg, q, sq, k, sk, v, sv, m0, u0, w0, has_state, scale)
    else:
        m_ch = new_empty((B, NS, H, L), dtype=torch.float32, device=dev)
        u_ch = new_empty((B, NS, H, L), dtype=torch.float32, device=dev)
        w_ch = new_empty((B, NS, H, L, Dv), dtype=torch.float32, device=dev)
        _tuned("recompute", cfg, lambda c: _scan_fwd_kernel[(NV, N * H)](
            q, k, v, k, m0 if has_state else m_ch, u0 if has_state else u_ch, w0 if has_state else w_ch,
            m_ch, u_ch, w_ch, m_ch, u_ch, w_ch, cfg.cu, *sq, *sk, *sv, 0, 0, 0,
            T, H, L, cfg.D, Dv, NS, scale, STORE_OUT=False, STORE_CHUNKS=True, STORE_FINAL=False,
            **c.options, **common), dev)
    # 2. reverse pass
    dv = new_empty((B, T, H, Dv), dtype=v_dtype, device=dev)
    da_p = new_empty((NV, B, T, H, L), dtype=torch.float32, device=dev)
    dp_p = None if cfg.aaren else new_empty((NV, B, T, H, L), dtype=torch.float32, device=dev)
    du0_p = new_empty((NV, N, H, L), dtype=torch.float32, device=dev)
    dw0 = new_empty((N, H, L, Dv), dtype=torch.float32, device=dev) if has_state else None
    if cfg.chunked:
        # per chunk the affine map of the state cotangent (parallel), its reverse scan, then the gradients
        dw_ch = new_empty((B, NS, H, L, Dv), dtype=torch.float32, device=dev)
        du_ch = new_empty((NV, B, NS, H, L), dtype=torch.float32, device=dev)
        f_ch = new_empty((B, NS, H, L), dtype=torch.float32, device=dev)
        slot_args = (q, k, v, do, m_ch, u_ch, w_ch)
        strides = (*sq, *sk, *sv, *sd)
        chunk_meta = dict(C=cfg.C, BL=cfg.BL, BK=cfg.BK, BV=cfg.BV, AAREN=cfg.aaren, USE_DOT=cfg.use_dot,
                          PREC=cfg.prec, RISE_LIMIT=RISE_LIMIT, VARLEN=cfg.varlen, LOG_N=cfg.log_n)
        if NS > 0:
            _tuned("chunk_cot", cfg, lambda c: _chunk_cot_kernel[(B * H * NS, NV)](
                *slot_args, dw_ch, du_ch, f_ch, cfg.cu, *strides, B, T, H, L, cfg.D, Dv, N, NS, scale,
                **chunk_meta, **c.options), dev)
        # the light reverse scan: the chunk kernels' Dv tiles split until its grid fills the SMs (occupancy rule)
        bv_scan = occupancy.split_dv(N * H * NV, cfg.BV, cfg.BV, occupancy.sm_count(dev))
        sub = cfg.BV // bv_scan
        _cot_scan_kernel[(NV * sub, N * H)](
            du_T if du_T is not None else du0_p, dw_T if dw_T is not None else dw_ch, dw_ch, du_ch, f_ch, du0_p,
            dw0 if dw0 is not None else dw_ch, cfg.cu, B, T, H, L, Dv, NS, N,
            C=cfg.C, BL=cfg.BL, BV=bv_scan, SUB=sub, HAS_STATE=has_state, HAS_DU=du_T is not None,
            HAS_DW=dw_T is not None, VARLEN=cfg.varlen, num_warps=cfg.num_warps)
        if NS > 0:
            _tuned("chunk_grads", cfg, lambda c: _chunk_grads_kernel[(B * H * NS, NV)](
                *slot_args, dw_ch, du_ch, dv, da_p, dp_p if dp_p is not None else da_p, cfg.cu, *strides,
                dv.stride(0), dv.stride(1), dv.stride(2), B, T, H, L, cfg.D, Dv, N, NS, scale,
                **chunk_meta, **c.options), dev)
        du0 = du0_p.sum(0) if has_state else None
        return dv, da_p, dp_p, du0, dw0
    _tuned("bwd", cfg, lambda c: _scan_bwd_kernel[(NV, N * H)](
        q, k, v, do, m_ch, u_ch, w_ch, du_T if du_T is not None else du0_p, dw_T if dw_T is not None else w_ch,
        dv, da_p, dp_p if dp_p is not None else da_p, du0_p, dw0 if dw0 is not None else w_ch, cfg.cu,
        *sq, *sk, *sv, *sd, dv.stride(0), dv.stride(1), dv.stride(2),
        B, T, H, L, cfg.D, Dv, NS, N, scale, HAS_DU=du_T is not None, HAS_DW=dw_T is not None,
        **c.options, **common), dev)
    du0 = du0_p.sum(0) if has_state else None
    return dv, da_p, dp_p, du0, dw0


def _finish(cfg: _Config, q, sq, k, da_p, dp_p, dq, dk, scale):
    """Launch ``_finish_kernel``; returns the Aaren dq partials [B, NT, H, D] (None for Latte)."""
    B, T, H = cfg.B, cfg.T, cfg.H
    NT = triton.cdiv(T, cfg.C)
    k, sk = _rows(k)
    dq_p = new_empty((B, NT, H, cfg.D), dtype=torch.float32, device=k.device) if cfg.aaren else None
    if T > 0:
        _finish_kernel[(NT, B * H)](
            q, k, da_p, dp_p if dp_p is not None else da_p, dq, dk, dq_p if dq_p is not None else da_p,
            *sq, *sk, dq.stride(0), dq.stride(1), dq.stride(2) if dq.dim() == 4 else 0,
            dk.stride(0), dk.stride(1), dk.stride(2),
            T, H, cfg.L, cfg.D, cfg.NV, NT, B * T * H * cfg.L, scale,
            C=cfg.C, BL=cfg.BL, BK=cfg.BK, AAREN=cfg.aaren, num_warps=4)
    return dq_p


# ----------------------------------------------------------------------------------------------- Aaren


def _aaren_q(q: Tensor, k: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """q ``[H, D]`` or ``[B, H, D]`` made contiguous, with (batch, time, head) strides (batch 0 if shared)."""
    q = q.contiguous()
    return q, ((0 if q.dim() == 2 else q.stride(0)), 0, q.stride(-2))


_AAREN_GPU_WARNED: list = []


def _warn_unverified_aaren(device: torch.device) -> None:
    """Once per process on a GPU: the Aaren kernels as they are now have not run on a GPU yet (see the note)."""
    if _common.compiles_for_gpu(device) and not _AAREN_GPU_WARNED:
        _AAREN_GPU_WARNED.append(True)
        warnings.warn("flashts: the Triton Aaren kernels failed on an H100 with Triton 3.6 (2026-11-23) and their fix "
                      "(AAREN_LATENT_BLOCK = 16) has not been run on a GPU yet; backend='auto' uses the CUDA backend "
                      "for Aaren until it has. Check results against backend='torch' before relying on them.",
                      RuntimeWarning, stacklevel=3)


def aaren_attention_fwd(q, k, v, m0, u0, w0, cu_seqlens, scale):
    """-> (o [B, T, H, Dv] in k.dtype, m_T [N, H], u_T [N, H], w_T [N, H, Dv]) (float32 states)."""
    _warn_unverified_aaren(k.device)
    B, T, H, D = k.shape
    cfg = _Config(k, v, 1, D, cu_seqlens, aaren=True)
    N, Dv = cfg.N, cfg.Dv
    qc, sq = _aaren_q(q, k)
    o, m_T, u_T, w_T = _scan_forward(cfg, qc, sq, k, v, _state(m0, (N, H, 1)), _state(u0, (N, H, 1)),
                                     _state(w0, (N, H, 1, Dv)), scale)
    return o, m_T.view(N, H), u_T.view(N, H), w_T.view(N, H, Dv)


def aaren_attention_bwd(do, du_T, dw_T, q, k, v, o, m0, u0, w0, cu_seqlens, scale):
    """-> (dq (shape of q), dk, dv, du0 [N, H], dw0 [N, H, Dv]); du0/dw0 None without an initial state."""
    B, T, H, D = k.shape
    cfg = _Config(k, v, 1, D, cu_seqlens, aaren=True)
    N, Dv = cfg.N, cfg.Dv
    qc, sq = _aaren_q(q, k)
    dv, da_p, _, du0, dw0 = _scan_backward(
        cfg, qc, sq, k, v, do, _state(m0, (N, H, 1)), _state(u0, (N, H, 1)), _state(w0, (N, H, 1, Dv)),
        _state(du_T, (N, H, 1)), _state(dw_T, (N, H, 1, Dv)), scale)
    dk = new_empty((B, T, H, D), dtype=k.dtype, device=k.device)
    dq_p = _finish(cfg, qc, sq, k, da_p, None, dk, dk, scale)
    dq = dq_p.sum(1)                                                  # [B, H, D]
    if q.dim() == 2:
        dq = dq.sum(0)
    if m0 is not None:
        du0, dw0 = du0.view(N, H).to(u0.dtype), dw0.view(N, H, Dv).to(w0.dtype)
    return dq.to(q.dtype), dk, dv, du0, dw0


# ----------------------------------------------------------------------------------------------- Latte


def latte_attention_fwd(q, k, v, m0, a0, S0, cu_seqlens, causal):
    """-> (o [B, T, H, Dv] in q.dtype, m_T [N, H, L], a_T [N, H, L], S_T [N, H, L, Dv]); states None when
    not causal."""
    B, T, H, L = q.shape
    cfg = _Config(k, v, L, L, cu_seqlens, aaren=False, causal=causal)
    N, Dv = cfg.N, cfg.Dv
    qr, sq = _rows(q)
    if causal:
        return _scan_forward(cfg, qr, sq, k, v, _state(m0, (N, H, L)), _state(a0, (N, H, L)),
                             _state(S0, (N, H, L, Dv)), 1.0)
    k, sk = _rows(k)
    v, sv = _rows(v)
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
    _bidir_fwd_kernel[(cfg.NV, N * H)](
        qr, k, v, o, cfg.cu, *sq, *sk, *sv, o.stride(0), o.stride(1), o.stride(2), T, H, L, Dv,
        C=cfg.C, BL=cfg.BL, BV=cfg.BV, USE_DOT=cfg.use_dot, PREC=cfg.prec, VARLEN=cfg.varlen,
        num_warps=cfg.num_warps)
    return o, None, None, None


def latte_attention_bwd(do, da_T, dS_T, q, k, v, o, m0, a0, S0, cu_seqlens, causal):
    """-> (dq, dk, dv, da0 [N, H, L], dS0 [N, H, L, Dv]); da0/dS0 None without an initial state."""
    B, T, H, L = q.shape
    cfg = _Config(k, v, L, L, cu_seqlens, aaren=False, causal=causal)
    N, Dv = cfg.N, cfg.Dv
    qr, sq = _rows(q)
    da0 = dS0 = None
    if causal:
        dv, dk_p, dp_p, da0, dS0 = _scan_backward(
            cfg, qr, sq, k, v, do, _state(m0, (N, H, L)), _state(a0, (N, H, L)), _state(S0, (N, H, L, Dv)),
            _state(da_T, (N, H, L)), _state(dS_T, (N, H, L, Dv)), 1.0)
        if m0 is not None:
            da0, dS0 = da0.to(a0.dtype), dS0.to(S0.dtype)
    else:
        kr, sk = _rows(k)
        vr, sv = _rows(v)
        dor, sd = _rows(do)
        dv = new_empty((B, T, H, Dv), dtype=v.dtype, device=q.device)
        dk_p = new_empty((cfg.NV, B, T, H, L), dtype=torch.float32, device=q.device)
        dp_p = new_empty((cfg.NV, B, T, H, L), dtype=torch.float32, device=q.device)
        _bidir_bwd_kernel[(cfg.NV, N * H)](
            qr, kr, vr, dor, dv, dk_p, dp_p, cfg.cu, *sq, *sk, *sv, *sd, dv.stride(0), dv.stride(1), dv.stride(2),
            B, T, H, L, Dv,
            C=cfg.C, BL=cfg.BL, BV=cfg.BV, USE_DOT=cfg.use_dot, PREC=cfg.prec, VARLEN=cfg.varlen,
            num_warps=cfg.bwd_warps)
    dq = new_empty((B, T, H, L), dtype=q.dtype, device=q.device)
    dk = new_empty((B, T, H, L), dtype=k.dtype, device=q.device)
    _finish(cfg, qr, sq, k, dk_p, dp_p, dq, dk, 1.0)
    return dq, dk, dv, da0, dS0
