"""Linear attention (SPEC §1) for the ``triton`` backend: chunkwise fused kernels, hand-written backward.

Math. With q̃_t = scale·φ(q_t), k̃_t = φ(k_t) (φ = elu+1, relu or identity, applied in the loads)::

    S_t = S_0 + Σ_{s∈A(t)} k̃_s v_sᵀ   [D, Dv]        z_t = z_0 + Σ_{s∈A(t)} k̃_s   [D]
    num_t = q̃_tᵀ S_t,  den_t = q̃_t·z_t,   o_t = num_t / (den_t + eps)   (or o_t = num_t without normalize)

Chunking. Each sequence is cut into chunks of C = CHUNK_SIZE steps (the last one masked). For chunk c, with
(S_{c-1}, z_{c-1}) the state entering it, Q/K/V its rows of q̃/k̃/v and M the causal mask (row ≥ column)::

    NUM_c = Q S_{c-1} + (M∘QKᵀ) V        DEN_c = Q z_{c-1} + rowsum(M∘QKᵀ)
    S_c = S_{c-1} + Kᵀ V                 z_c = z_{c-1} + colsum(K)

Forward kernels
* ``_fwd_causal_kernel`` — one pass, one program per (sequence, head, Dv tile of BV columns) that loops over
  the chunks keeping S (a [D, BV] tile) and z in registers, writes o and finally (S_T, z_T). The normaliser is
  its own [D] accumulator; every Dv tile recomputes the (cheap) den so o is normalised in the same kernel.
  Why one pass rather than "write chunk states, then apply them in parallel": the sequential part would be
  the same length in both designs (the state recurrence runs over all chunks either way), the one pass never
  writes a state to memory (extra memory O(1), one launch), and time-series workloads have B·H·(Dv/BV) large
  enough to fill a GPU. The cost: only B·H·⌈Dv/BV⌉ programs, so a tiny B·H with a huge T under-fills the GPU
  (the chunk-parallel backward kernels do not have this limit).
* FWD_MODE "two_pass" (the alternative, chosen by measurement with ``python -m bench.tune``):
  ``_chunk_state_kernel`` writes the state entering every chunk (a light sequential pass: K_cᵀV_c per chunk),
  then ``_causal_out_kernel`` computes every chunk's output in parallel (B·H·NS programs).
* ``_decode_kernel`` — T == 1 (no cu_seqlens): the single-token step S = S_0 + k̃vᵀ, z = z_0 + k̃,
  o = q̃ᵀS/(q̃·z + eps) with plain vector ops (no tl.dot), one program per (batch, head, Dv tile).
* non-causal: ``_chunk_state_kernel`` reduces (S, z) = (S_0, z_0) + Σ_s (k̃_s v_sᵀ, k̃_s) over the sequence
  (that is S_T, z_T), then ``_apply_kernel`` computes o = q̃ᵀS/(q̃·z + eps) in parallel over chunks.

Backward (the standard chunked linear-attention backward; autograd is off inside the custom op). With v' =
[v | 1] the normaliser is one more value column: the cotangent of [num | den] is dO' = [do·r | g] with
r_t = 1/(den_t + eps), g_t = −(do_t·o_t)·r_t (normalize), or [do | 0] (not normalize). Then, with dS_c, dz_c
the cotangents of the state *leaving* chunk c (dS_T, dz_T for the last chunk)::

    A = M ∘ (dO' V'ᵀ) = M ∘ (r·(do Vᵀ) + g 1ᵀ)                 [C, C]
    dQ = (do·r) S_{c-1}ᵀ + g z_{c-1}ᵀ + A K                   (cotangent of q̃)
    dK = V dS_cᵀ + 1 dz_cᵀ + Aᵀ Q                             (cotangent of k̃)
    dV = K dS_c + (M∘QKᵀ)ᵀ (do·r)
    dS_{c-1} = dS_c + Qᵀ (do·r)          dz_{c-1} = dz_c + Qᵀ g

and dq = scale·φ'(q)·dQ, dk = φ'(k)·dK (φ' = 1 / eˣ for x > 0 / x ≤ 0 for elu+1, [x > 0] for relu, 1 for
identity; the exponent is clamped to ≤ 0 before exp). Non-causal: the same with one state for the whole
sequence, M = 0 and dS = dS_T + Σ_t q̃_t (do_t r_t)ᵀ. Kernels (memory O(T·(D+Dv)) for inputs/gradients,
O(T·H) for r and g, O(T/C·D·Dv) for the recomputed chunk states; nothing per token of size D×Dv):

1. ``_chunk_state_kernel`` (forward in time, per (sequence, head, Dv tile)): recomputes and writes the state
   entering every chunk (causal) or the whole-sequence state (non-causal).
2. ``_norm_kernel`` (parallel over chunks; normalize only): den from the stored z and the chunk's QKᵀ, then
   r and g (do·o over all Dv tiles).
3. ``_dstate_kernel`` (reverse in time, per (sequence, head, Dv tile)): carries dS, dz from (dS_T, dz_T) and
   writes the cotangent leaving every chunk; what is left at the start is (dS_0, dz_0).
4. ``_grads_kernel`` (parallel over (chunk, kv head)): dq, dk, dv of a chunk from the stored states; dq and
   dk reduce over the Dv tiles in registers, and the GQA group sum of dk, dv (query head h reads kv head
   h // (H // Hk)) happens inside the program by looping over the group's query heads.

Packed sequences (``cu_seqlens``, B == 1): sequential kernels run one program per (sequence, head) and read
bos/eos from the tensor; chunk-parallel kernels run over "chunk slots": sequence n owns the slots
[bos_n // C + n, bos_n // C + n + ⌈L_n/C⌉) — disjoint, fewer than T // C + N in all, found from a slot by a
binary search over cu_seqlens inside the kernel (no host sync, no index table). The slots also index the
stored chunk states. Zero-length sequences own no chunk: their final state is the initial one, and the
final-state cotangent passes straight to dS_0.

Precision. Everything is computed in float32 (loads are upcast; states are float32). ``tl.dot`` runs with
``input_precision = FP32_DOT_PRECISION`` ("tf32x3": three tf32 tensor-core products, ~1e-6 relative error,
close to float32) for float32 inputs, and ``HALF_DOT_PRECISION`` ("tf32", 10 mantissa bits like fp16 and more
than bf16) for float16/bfloat16 inputs. "ieee" (exact float32 FMA) is available but makes ptxas spill heavily
with 64-wide chunks (measured offline for sm_90: up to 15 KB of stack per thread at D = 64), so it is not the
default. (The interpreter ignores input_precision: CPU tests compute exact float32 products.)

Blocking. BK = next power of two ≥ max(D, 16) holds the whole head dim in one tile (masked); Dv is tiled by
BV = next power of two ≥ max(Dv, 16), capped at BV_MAX (64; 32 when BK ≥ 128) to bound the [BK, BV] state
tile. C = CHUNK_SIZE (64; float32 inputs: FP32_CHUNK_SIZE, 32) for BK ≤ 64, halved per doubling of BK beyond
(32 / 16 at BK = 128, 16 from 256 on) so the [C, BK] tiles and their shared-memory staging fit. Each launch
kind has a small config set (``_tune_set``: Dv tile ≤ BV, warps, pipelining stages, and for the gradient kernel
one launch or three) per dtype class and BK, chosen so that sm_90 compiles do not spill (README, "Register
spills"); the default is the first, the others are timed on the user's GPU at the first call of a shape bucket
(kernels/autotune.py). Sequential grids split their config's Dv tile further by the occupancy rule. A launch
that runs out of shared memory is retried without pipelining. Grids are 1-D (B·H can exceed
the 65535 limit of the other grid axes, e.g. channel-independent models folding variables into the batch).
Inputs may have any strides as long as the last dim is contiguous (otherwise the launcher copies that
tensor); the small state tensors and cu_seqlens are made contiguous. Offsets that can exceed 2³¹ are
computed in int64.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources
from torch import Tensor

from flashts.kernels import autotune, occupancy
from flashts.ops import _common
from flashts.ops._common import new_empty, state_dtype

# Steps per chunk for head dims ≤ 64 (the masked QKᵀ blocks are C × C; a power of two ≥ 16).
CHUNK_SIZE = 64
# Cap of the chunk for float32 inputs: their "tf32x3" products split every operand in two (three times the operand
# registers), so [64, 64] float32 tiles spilled 0.5–2 KB per thread on sm_90; 32-step chunks remove most of it.
FP32_CHUNK_SIZE = 32
# Largest Dv tile (power of two ≥ 16); halved when the head dim tile is ≥ 128.
BV_MAX = 64
# tl.dot precision for float32 inputs and for float16/bfloat16 inputs ("ieee", "tf32" or "tf32x3").
FP32_DOT_PRECISION = "tf32x3"
HALF_DOT_PRECISION = "tf32"
# Operands of the chunk products for float16/bfloat16 inputs: "float32" (φ(q), φ(k), states in float32 at
# HALF_DOT_PRECISION; the default) or "input" (rounded to the input dtype first: twice the tensor-core rate and
# half the registers, about 2⁻⁸ relative rounding of the states in the products, as flash-linear-attention does).
# Under the Triton interpreter bfloat16 products stay float32 (its bf16 tl.dot is not exact).
HALF_DOT_OPERANDS = "float32"
# Software-pipelining depth of the chunk loops: None (default) = each launch's config (``_tune_set``); an int
# overrides every launch's stages (``python -m bench.tune`` sweeps it).
NUM_STAGES: Optional[int] = None
# Launch configurations forced per kind ({kind: _Tiles}, e.g. {"grads": _Tiles(16, 8, 1, True)}), bypassing the
# sets and autotuning (tests: every config of every set runs once under the interpreter). None: the sets.
TILES: Optional[dict] = None
# Causal forward: "one_pass" (``_fwd_causal_kernel``, the state in registers) or "two_pass" (the state entering
# every chunk written by ``_chunk_state_kernel``, then ``_causal_out_kernel`` over all chunks in parallel).
# "auto" (default): the occupancy rule of kernels/occupancy.py (one pass when N·H·⌈Dv/BV⌉ ≥ 2 programs per SM).
FWD_MODE = "auto"

_FEATURE = {"identity": 0, "elu": 1, "relu": 2}


# --------------------------------------------------------------------------- launch configurations


class _Tiles(NamedTuple):
    """One launch configuration. ``BV``: the Dv tile, an upper bound (clamped to the call's Dv tile: BV_MAX and
    the padded Dv; for the sequential kernels also to the occupancy rule's split); ``split`` (``_grads_kernel``
    only): dq, dk and dv as three launches (each recomputes its [C, C] block) instead of one holding every tile."""
    BV: int
    num_warps: int
    num_stages: int
    split: bool = False


# Config sets per dtype class ("half": bfloat16/float16; "fp32"), head-dim tile (64: BK ≤ 64; 128; 256: BK ≥ 256)
# and launch kind; the first of each set is the default (the interpreter's and FLASHTS_AUTOTUNE=0's), the others
# are what autotuning on the user's GPU times against it (kernels/autotune.py). Every config compiles for sm_90
# (Triton 3.9, tests/triton_compile.py) with the stack bytes of README's "Register spills" table (0 unless
# stated there). Kinds: "fwd_causal" (one pass), "chunk_state", "decode", "dstate" (sequential grids, N·H·⌈Dv/BV⌉
# programs); "causal_out", "apply", "norm", "grads" (chunk-parallel grids that loop over the Dv tiles).
_T = _Tiles
_TUNE = {
    "half": {
        64: {"fwd_causal": [_T(32, 8, 2), _T(32, 8, 1), _T(16, 8, 2)],
             "chunk_state": [_T(64, 8, 2), _T(32, 4, 2), _T(32, 8, 1)],
             "dstate": [_T(64, 8, 2), _T(32, 4, 2), _T(32, 8, 1)],
             "decode": [_T(64, 4, 1), _T(64, 8, 1)],
             "causal_out": [_T(64, 8, 2), _T(32, 4, 2), _T(64, 4, 2)],
             "apply": [_T(64, 8, 2), _T(64, 4, 2), _T(32, 4, 2)],
             "norm": [_T(64, 8, 2), _T(64, 4, 2), _T(32, 4, 2)],
             "grads": [_T(32, 8, 1), _T(32, 8, 2), _T(16, 8, 1), _T(16, 8, 2)]},
        128: {"fwd_causal": [_T(32, 8, 2), _T(32, 8, 1), _T(16, 8, 2)],
              "chunk_state": [_T(32, 8, 2), _T(16, 8, 2), _T(32, 4, 1)],
              "dstate": [_T(32, 8, 2), _T(16, 8, 2), _T(32, 4, 1)],
              "decode": [_T(32, 4, 1), _T(32, 8, 1)],
              "causal_out": [_T(32, 8, 2), _T(16, 8, 2), _T(32, 4, 2)],
              "apply": [_T(32, 8, 2), _T(32, 4, 2), _T(16, 8, 2)],
              "norm": [_T(32, 8, 2), _T(32, 4, 2), _T(16, 8, 2)],
              "grads": [_T(16, 8, 1, True), _T(16, 4, 1, True)]},
        256: {kind: [_T(16, 8, 1, kind == "grads")] for kind in ("fwd_causal", "chunk_state", "dstate", "decode",
                                                                  "causal_out", "apply", "norm", "grads")},
    },
    "fp32": {  # (chunks of 32 at BK ≤ 64, 16 at BK = 128: FP32_CHUNK_SIZE)
        64: {"fwd_causal": [_T(16, 8, 1), _T(32, 8, 1)],
             "chunk_state": [_T(64, 8, 2), _T(32, 8, 2), _T(16, 8, 1)],
             "dstate": [_T(64, 8, 2), _T(32, 8, 2), _T(16, 8, 1)],
             "decode": [_T(64, 4, 1), _T(32, 4, 1)],
             "causal_out": [_T(32, 8, 2), _T(64, 8, 2), _T(16, 8, 2)],
             "apply": [_T(64, 8, 2), _T(32, 8, 2), _T(16, 8, 1)],
             "norm": [_T(64, 8, 2), _T(32, 8, 2)],
             "grads": [_T(16, 8, 1, True), _T(16, 8, 2, True)]},
        128: {"fwd_causal": [_T(16, 8, 1), _T(32, 8, 1)],
              "chunk_state": [_T(32, 8, 2), _T(16, 8, 2), _T(16, 8, 1)],
              "dstate": [_T(16, 8, 2), _T(32, 8, 2), _T(16, 8, 1)],
              "decode": [_T(32, 4, 1), _T(16, 4, 1)],
              "causal_out": [_T(32, 8, 2), _T(16, 8, 1), _T(16, 4, 1)],
              "apply": [_T(32, 8, 2), _T(16, 8, 2)],
              "norm": [_T(32, 8, 2), _T(16, 8, 2)],
              "grads": [_T(16, 8, 1, True), _T(16, 8, 2, True)]},
    },
}
_TUNE["fp32"][256] = _TUNE["half"][256]
del _T


def _tune_set(kind: str, BK: int, dtype: torch.dtype) -> list:
    """The launch configurations of ``kind`` at head-dim tile ``BK`` for ``dtype`` (default first), see ``_TUNE``.

    >>> _tune_set("grads", 128, torch.bfloat16)[0]
    _Tiles(BV=16, num_warps=8, num_stages=1, split=True)
    """
    table = _TUNE["fp32" if dtype.itemsize >= 4 else "half"]
    return list(table[64 if BK <= 64 else 128 if BK <= 128 else 256][kind])


# --------------------------------------------------------------------------- device helpers


@triton.jit
def _phi(x, FEATURE: tl.constexpr):
    """φ(x): identity (0), elu(x)+1 (1; exp only of values ≤ 0), relu (2)."""
    y = x
    if FEATURE == 1:
        y = tl.where(x > 0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    if FEATURE == 2:
        y = tl.maximum(x, 0.0)
    return y


@triton.jit
def _times_phi_grad(dy, x, FEATURE: tl.constexpr):
    """dy·φ'(x)."""
    out = dy
    if FEATURE == 1:
        out = dy * tl.where(x > 0, 1.0, tl.exp(tl.minimum(x, 0.0)))
    if FEATURE == 2:
        out = tl.where(x > 0, dy, 0.0)
    return out


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
def _chunk_of_slot(cu, p, i_b, T, N, C: tl.constexpr, VARLEN: tl.constexpr, LOG_N: tl.constexpr):
    """Chunk slot p (of batch row i_b) -> (sequence, first step of the chunk, end of its sequence).

    Packed: sequence n owns slots from base_n = cu[n] // C + n on (strictly increasing in n), so the owner
    is the largest n with base_n ≤ p (binary search); slots past a sequence's last chunk give t0 ≥ eos."""
    if VARLEN:
        lo = p * 0
        hi = lo + N
        for _ in tl.static_range(LOG_N):
            mid = (lo + hi) // 2
            go = (tl.load(cu + mid) // C + mid) <= p
            lo = tl.where(go, mid, lo)
            hi = tl.where(go, hi, mid)
        bos = tl.load(cu + lo).to(tl.int64)
        eos = tl.load(cu + lo + 1).to(tl.int64)
        t0 = bos + (p - (bos // C + lo)) * C
        i_n = lo
    else:
        eos = (p * 0).to(tl.int64) + T
        t0 = p.to(tl.int64) * C
        i_n = i_b
    return i_n, t0, eos


@triton.jit
def _load_rows(ptr, offs_t, mask_t, stride_t, offs_f, mask_f):
    """[C, BF] tile of rows offs_t (time) and columns offs_f of a [T, F] slice with row stride stride_t, as
    float32 (0 outside the masks)."""
    m = mask_t[:, None] & mask_f[None, :]
    return tl.load(ptr + offs_t[:, None] * stride_t + offs_f[None, :], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _load_features(ptr, offs_t, mask_t, stride_t, offs_k, mask_k, FEATURE: tl.constexpr):
    """(raw x, φ(x)) tiles; φ(x) is 0 outside the masks (φ(0) = 1 for elu+1, so masked rows need zeroing)."""
    x = _load_rows(ptr, offs_t, mask_t, stride_t, offs_k, mask_k)
    f = tl.where(mask_t[:, None] & mask_k[None, :], _phi(x, FEATURE), 0.0)
    return x, f


@triton.jit
def _dot(a, b, PREC: tl.constexpr, DOT_OPS: tl.constexpr):
    """a @ b on the tensor cores, float32 accumulation. DOT_OPS 0: float32 operands at input_precision PREC;
    1 / 2: operands rounded to bfloat16 / float16 first (the input dtype; HALF_DOT_OPERANDS = "input")."""
    if DOT_OPS == 1:
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif DOT_OPS == 2:
        out = tl.dot(a.to(tl.float16), b.to(tl.float16))
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


# --------------------------------------------------------------------------- forward kernels


@triton.jit
def _fwd_causal_kernel(q, k, v, o, S0, z0, S_out, z_out, cu,
                       sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                       T, H, G, D, Dv, scale, eps,
                       C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr,
                       NORMALIZE: tl.constexpr, HAS_S0: tl.constexpr, VARLEN: tl.constexpr,
                       PREC: tl.constexpr, DOT_OPS: tl.constexpr):
    """One pass over the chunks of one (sequence, head, Dv tile), state in registers."""
    n_vt = tl.cdiv(Dv, BV)
    i_nh = tl.program_id(0) // n_vt  # 1-D grid: (sequence, head) major, Dv tile minor
    i_v = tl.program_id(0) % n_vt
    i_n = i_nh // H
    h = i_nh % H
    hk = h // G
    i_b, bos, eos, first_slot = _sequence(cu, i_n, T, C, VARLEN)
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < D
    mask_v = offs_v < Dv
    q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_ptr = k + i_b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_ptr = v + i_b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    o_ptr = o + i_b.to(tl.int64) * sob + h.to(tl.int64) * soh
    state_tile = offs_k[:, None] * Dv + offs_v[None, :]
    state_mask = mask_k[:, None] & mask_v[None, :]
    if HAS_S0:
        S = tl.load(S0 + i_nh.to(tl.int64) * D * Dv + state_tile, mask=state_mask, other=0.0).to(tl.float32)
        z = tl.load(z0 + i_nh.to(tl.int64) * D + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
        z = tl.zeros([BK], dtype=tl.float32)
    causal = offs_c[:, None] >= offs_c[None, :]
    for t0 in range(bos, eos, C):
        offs_t = t0 + offs_c
        mask_t = offs_t < eos
        _, qt = _load_features(q_ptr, offs_t, mask_t, sqt, offs_k, mask_k, FEATURE)
        qt = qt * scale
        _, kt = _load_features(k_ptr, offs_t, mask_t, skt, offs_k, mask_k, FEATURE)
        vv = _load_rows(v_ptr, offs_t, mask_t, svt, offs_v, mask_v)
        qk = tl.where(causal, _dot(qt, tl.trans(kt), PREC, DOT_OPS), 0.0)
        num = _dot(qt, S, PREC, DOT_OPS) + _dot(qk, vv, PREC, DOT_OPS)
        if NORMALIZE:
            den = tl.sum(qt * z[None, :], 1) + tl.sum(qk, 1)
            num = num / tl.where(mask_t, den + eps, 1.0)[:, None]  # (1 on padding rows: no 0/0)
        tl.store(o_ptr + offs_t[:, None] * sot + offs_v[None, :], num.to(o.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])
        S += _dot(tl.trans(kt), vv, PREC, DOT_OPS)
        z += tl.sum(kt, 0)
    tl.store(S_out + i_nh.to(tl.int64) * D * Dv + state_tile, S, mask=state_mask)
    tl.store(z_out + i_nh.to(tl.int64) * D + offs_k, z, mask=mask_k & (offs_k * 0 + i_v == 0))


@triton.jit
def _decode_kernel(q, k, v, o, S0, z0, S_out, z_out,
                   sqb, sqh, skb, skh, svb, svh, sob, soh,
                   H, G, D, Dv, scale, eps,
                   BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr, NORMALIZE: tl.constexpr,
                   HAS_S0: tl.constexpr):
    """T == 1: S = S_0 + k̃vᵀ, z = z_0 + k̃, o = q̃ᵀS / (q̃·z + eps), per (batch, head, Dv tile)."""
    n_vt = tl.cdiv(Dv, BV)
    i_bh = tl.program_id(0) // n_vt
    i_v = tl.program_id(0) % n_vt
    b = i_bh // H
    h = i_bh % H
    hk = h // G
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < D
    mask_v = offs_v < Dv
    xq = tl.load(q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    xk = tl.load(k + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    vv = tl.load(v + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    qt = tl.where(mask_k, _phi(xq, FEATURE), 0.0) * scale
    kt = tl.where(mask_k, _phi(xk, FEATURE), 0.0)
    state_tile = offs_k[:, None] * Dv + offs_v[None, :]
    state_mask = mask_k[:, None] & mask_v[None, :]
    S = kt[:, None] * vv[None, :]
    z = kt
    if HAS_S0:
        S += tl.load(S0 + i_bh.to(tl.int64) * D * Dv + state_tile, mask=state_mask, other=0.0).to(tl.float32)
        z += tl.load(z0 + i_bh.to(tl.int64) * D + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    out = tl.sum(qt[:, None] * S, 0)
    if NORMALIZE:
        out = out / (tl.sum(qt * z, 0) + eps)
    tl.store(o + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_v, out.to(o.dtype.element_ty), mask=mask_v)
    tl.store(S_out + i_bh.to(tl.int64) * D * Dv + state_tile, S, mask=state_mask)
    tl.store(z_out + i_bh.to(tl.int64) * D + offs_k, z, mask=mask_k & (offs_k * 0 + i_v == 0))


@triton.jit
def _chunk_state_kernel(k, v, S0, z0, S_chunks, z_chunks, S_out, z_out, cu,
                        skb, skt, skh, svb, svt, svh,
                        T, H, G, D, Dv, NS,
                        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr,
                        HAS_S0: tl.constexpr, VARLEN: tl.constexpr, STORE_CHUNKS: tl.constexpr,
                        STORE_FINAL: tl.constexpr, PREC: tl.constexpr, DOT_OPS: tl.constexpr):
    """State recurrence S += K_cᵀV_c, z += colsum(K_c) over the chunks of one (sequence, head, Dv tile).
    STORE_CHUNKS: write the state entering every chunk to its slot of S_chunks [B, NS, H, D, Dv] /
    z_chunks [B, NS, H, D]; STORE_FINAL: write the final state to S_out [N, H, D, Dv] / z_out [N, H, D]."""
    n_vt = tl.cdiv(Dv, BV)
    i_nh = tl.program_id(0) // n_vt  # 1-D grid: (sequence, head) major, Dv tile minor
    i_v = tl.program_id(0) % n_vt
    i_n = i_nh // H
    h = i_nh % H
    hk = h // G
    i_b, bos, eos, first_slot = _sequence(cu, i_n, T, C, VARLEN)
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < D
    mask_v = offs_v < Dv
    k_ptr = k + i_b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_ptr = v + i_b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    state_tile = offs_k[:, None] * Dv + offs_v[None, :]
    state_mask = mask_k[:, None] & mask_v[None, :]
    if HAS_S0:
        S = tl.load(S0 + i_nh.to(tl.int64) * D * Dv + state_tile, mask=state_mask, other=0.0).to(tl.float32)
        z = tl.load(z0 + i_nh.to(tl.int64) * D + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        S = tl.zeros([BK, BV], dtype=tl.float32)
        z = tl.zeros([BK], dtype=tl.float32)
    n_chunks = (eos - bos + C - 1) // C
    for i in range(0, n_chunks):
        offs_t = bos + i * C + offs_c
        mask_t = offs_t < eos
        if STORE_CHUNKS:
            row = (i_b.to(tl.int64) * NS + first_slot + i) * H + h
            tl.store(S_chunks + row * D * Dv + state_tile, S, mask=state_mask)
            tl.store(z_chunks + row * D + offs_k, z, mask=mask_k & (offs_k * 0 + i_v == 0))
        _, kt = _load_features(k_ptr, offs_t, mask_t, skt, offs_k, mask_k, FEATURE)
        vv = _load_rows(v_ptr, offs_t, mask_t, svt, offs_v, mask_v)
        S += _dot(tl.trans(kt), vv, PREC, DOT_OPS)
        z += tl.sum(kt, 0)
    if STORE_FINAL:
        tl.store(S_out + i_nh.to(tl.int64) * D * Dv + state_tile, S, mask=state_mask)
        tl.store(z_out + i_nh.to(tl.int64) * D + offs_k, z, mask=mask_k & (offs_k * 0 + i_v == 0))


@triton.jit
def _apply_kernel(q, o, S_full, z_full, cu,
                  sqb, sqt, sqh, sob, sot, soh,
                  T, H, N, D, Dv, NS, scale, eps,
                  C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr,
                  NORMALIZE: tl.constexpr, VARLEN: tl.constexpr, LOG_N: tl.constexpr, PREC: tl.constexpr, DOT_OPS: tl.constexpr):
    """Non-causal output of one chunk: o = q̃ᵀS / (q̃·z + eps) with the whole-sequence state, all Dv tiles."""
    i_bh = tl.program_id(0) // NS  # 1-D grid: (batch, head) major, chunk slot minor
    p = tl.program_id(0) % NS
    i_b = i_bh // H
    h = i_bh % H
    i_n, t0, eos = _chunk_of_slot(cu, p, i_b, T, N, C, VARLEN, LOG_N)
    if t0 >= eos:
        return
    offs_t = t0 + tl.arange(0, C)
    mask_t = offs_t < eos
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < D
    srow = i_n.to(tl.int64) * H + h
    _, qt = _load_features(q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, offs_t, mask_t, sqt, offs_k,
                           mask_k, FEATURE)
    qt = qt * scale
    if NORMALIZE:
        z = tl.load(z_full + srow * D + offs_k, mask=mask_k, other=0.0)
        inv = 1.0 / tl.where(mask_t, tl.sum(qt * z[None, :], 1) + eps, 1.0)
    o_ptr = o + i_b.to(tl.int64) * sob + h.to(tl.int64) * soh
    for j in range(0, tl.cdiv(Dv, BV)):
        offs_v = j * BV + tl.arange(0, BV)
        mask_v = offs_v < Dv
        S = tl.load(S_full + srow * D * Dv + offs_k[:, None] * Dv + offs_v[None, :],
                    mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        out = _dot(qt, S, PREC, DOT_OPS)
        if NORMALIZE:
            out = out * inv[:, None]
        tl.store(o_ptr + offs_t[:, None] * sot + offs_v[None, :], out.to(o.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])


@triton.jit
def _causal_out_kernel(q, k, v, o, S_chunks, z_chunks, cu,
                       sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                       T, H, G, N, D, Dv, NS, scale, eps,
                       C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr,
                       NORMALIZE: tl.constexpr, VARLEN: tl.constexpr, LOG_N: tl.constexpr, PREC: tl.constexpr, DOT_OPS: tl.constexpr):
    """FWD_MODE "two_pass": causal output of one chunk from the state entering it (S_{c-1}, z_{c-1} in the
    chunk's slot): o = (Q S_{c-1} + (M∘QKᵀ)V) / (Q z_{c-1} + rowsum(M∘QKᵀ) + eps), all Dv tiles (QKᵀ once)."""
    i_bh = tl.program_id(0) // NS  # 1-D grid: (batch, head) major, chunk slot minor
    p = tl.program_id(0) % NS
    i_b = i_bh // H
    h = i_bh % H
    hk = h // G
    i_n, t0, eos = _chunk_of_slot(cu, p, i_b, T, N, C, VARLEN, LOG_N)
    if t0 >= eos:
        return
    offs_c = tl.arange(0, C)
    offs_t = t0 + offs_c
    mask_t = offs_t < eos
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < D
    row = (i_b.to(tl.int64) * NS + p) * H + h
    _, qt = _load_features(q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, offs_t, mask_t, sqt, offs_k,
                           mask_k, FEATURE)
    qt = qt * scale
    _, kt = _load_features(k + i_b.to(tl.int64) * skb + hk.to(tl.int64) * skh, offs_t, mask_t, skt, offs_k,
                           mask_k, FEATURE)
    qk = tl.where(offs_c[:, None] >= offs_c[None, :], _dot(qt, tl.trans(kt), PREC, DOT_OPS), 0.0)
    if NORMALIZE:
        z = tl.load(z_chunks + row * D + offs_k, mask=mask_k, other=0.0)
        inv = 1.0 / tl.where(mask_t, tl.sum(qt * z[None, :], 1) + tl.sum(qk, 1) + eps, 1.0)
    v_ptr = v + i_b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    o_ptr = o + i_b.to(tl.int64) * sob + h.to(tl.int64) * soh
    for j in range(0, tl.cdiv(Dv, BV)):
        offs_v = j * BV + tl.arange(0, BV)
        mask_v = offs_v < Dv
        S = tl.load(S_chunks + row * D * Dv + offs_k[:, None] * Dv + offs_v[None, :],
                    mask=mask_k[:, None] & mask_v[None, :], other=0.0)
        vv = _load_rows(v_ptr, offs_t, mask_t, svt, offs_v, mask_v)
        out = _dot(qt, S, PREC, DOT_OPS) + _dot(qk, vv, PREC, DOT_OPS)
        if NORMALIZE:
            out = out * inv[:, None]
        tl.store(o_ptr + offs_t[:, None] * sot + offs_v[None, :], out.to(o.dtype.element_ty),
                 mask=mask_t[:, None] & mask_v[None, :])


# --------------------------------------------------------------------------- backward kernels


@triton.jit
def _norm_kernel(q, k, o, do, z_states, r_out, g_out, cu,
                 sqb, sqt, sqh, skb, skt, skh, sob, sot, soh, sdb, sdt, sdh,
                 T, H, G, N, D, Dv, NS, scale, eps,
                 C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr,
                 CAUSAL: tl.constexpr, VARLEN: tl.constexpr, LOG_N: tl.constexpr, PREC: tl.constexpr, DOT_OPS: tl.constexpr):
    """r = 1/(den + eps) and g = −(do·o)·r for the steps of one chunk of one head ([B, T, H] float32).
    den = q̃·z_{c-1} + rowsum(M∘QKᵀ) (causal, z_{c-1} from the chunk-state slot) or q̃·z (non-causal)."""
    i_bh = tl.program_id(0) // NS  # 1-D grid: (batch, head) major, chunk slot minor
    p = tl.program_id(0) % NS
    i_b = i_bh // H
    h = i_bh % H
    hk = h // G
    i_n, t0, eos = _chunk_of_slot(cu, p, i_b, T, N, C, VARLEN, LOG_N)
    if t0 >= eos:
        return
    offs_c = tl.arange(0, C)
    offs_t = t0 + offs_c
    mask_t = offs_t < eos
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < D
    _, qt = _load_features(q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh, offs_t, mask_t, sqt, offs_k,
                           mask_k, FEATURE)
    qt = qt * scale
    if CAUSAL:
        srow = (i_b.to(tl.int64) * NS + p) * H + h
    else:
        srow = i_n.to(tl.int64) * H + h
    z = tl.load(z_states + srow * D + offs_k, mask=mask_k, other=0.0)
    den = tl.sum(qt * z[None, :], 1)
    if CAUSAL:
        _, kt = _load_features(k + i_b.to(tl.int64) * skb + hk.to(tl.int64) * skh, offs_t, mask_t, skt, offs_k,
                               mask_k, FEATURE)
        qk = _dot(qt, tl.trans(kt), PREC, DOT_OPS)
        den += tl.sum(tl.where(offs_c[:, None] >= offs_c[None, :], qk, 0.0), 1)
    o_ptr = o + i_b.to(tl.int64) * sob + h.to(tl.int64) * soh
    do_ptr = do + i_b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
    delta = tl.zeros([C], dtype=tl.float32)
    for j in range(0, tl.cdiv(Dv, BV)):
        offs_v = j * BV + tl.arange(0, BV)
        mask_v = offs_v < Dv
        delta += tl.sum(_load_rows(o_ptr, offs_t, mask_t, sot, offs_v, mask_v)
                        * _load_rows(do_ptr, offs_t, mask_t, sdt, offs_v, mask_v), 1)
    r = 1.0 / tl.where(mask_t, den + eps, 1.0)
    rows = (i_b.to(tl.int64) * T + offs_t) * H + h
    tl.store(r_out + rows, r, mask=mask_t)
    tl.store(g_out + rows, -delta * r, mask=mask_t)


@triton.jit
def _dstate_kernel(q, do, r_in, g_in, dS_T, dz_T, dS_chunks, dz_chunks, dS_out, dz_out, cu,
                   sqb, sqt, sqh, sdb, sdt, sdh,
                   T, H, D, Dv, NS, scale,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr,
                   NORMALIZE: tl.constexpr, HAS_DS: tl.constexpr, HAS_DZ: tl.constexpr, CAUSAL: tl.constexpr,
                   STORE_FINAL: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr, DOT_OPS: tl.constexpr):
    """Reverse recurrence dS += Q_cᵀ(do·r), dz += Q_cᵀ g from (dS_T, dz_T), per (sequence, head, Dv tile).
    CAUSAL: writes the cotangent of the state leaving every chunk to its slot; the final value is the
    cotangent of the initial state (stored when STORE_FINAL). Non-causal: the final value is the cotangent of
    the whole-sequence state (stored to dS_out, dz_out)."""
    n_vt = tl.cdiv(Dv, BV)
    i_nh = tl.program_id(0) // n_vt  # 1-D grid: (sequence, head) major, Dv tile minor
    i_v = tl.program_id(0) % n_vt
    i_n = i_nh // H
    h = i_nh % H
    i_b, bos, eos, first_slot = _sequence(cu, i_n, T, C, VARLEN)
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BK)
    offs_v = i_v * BV + tl.arange(0, BV)
    mask_k = offs_k < D
    mask_v = offs_v < Dv
    q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    do_ptr = do + i_b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
    state_tile = offs_k[:, None] * Dv + offs_v[None, :]
    state_mask = mask_k[:, None] & mask_v[None, :]
    if HAS_DS:
        dS = tl.load(dS_T + i_nh.to(tl.int64) * D * Dv + state_tile, mask=state_mask, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DZ:
        dz = tl.load(dz_T + i_nh.to(tl.int64) * D + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    else:
        dz = tl.zeros([BK], dtype=tl.float32)
    n_chunks = (eos - bos + C - 1) // C
    for it in range(0, n_chunks):
        i = n_chunks - 1 - it
        offs_t = bos + i * C + offs_c
        mask_t = offs_t < eos
        if CAUSAL:
            row = (i_b.to(tl.int64) * NS + first_slot + i) * H + h
            tl.store(dS_chunks + row * D * Dv + state_tile, dS, mask=state_mask)
            tl.store(dz_chunks + row * D + offs_k, dz, mask=mask_k & (offs_k * 0 + i_v == 0))
        _, qt = _load_features(q_ptr, offs_t, mask_t, sqt, offs_k, mask_k, FEATURE)
        qt = qt * scale
        dnum = _load_rows(do_ptr, offs_t, mask_t, sdt, offs_v, mask_v)
        if NORMALIZE:
            rows = (i_b.to(tl.int64) * T + offs_t) * H + h
            r = tl.load(r_in + rows, mask=mask_t, other=0.0)
            g = tl.load(g_in + rows, mask=mask_t, other=0.0)
            dnum = dnum * r[:, None]
            dz += tl.sum(qt * g[:, None], 0)
        dS += _dot(tl.trans(qt), dnum, PREC, DOT_OPS)
    if STORE_FINAL:
        tl.store(dS_out + i_nh.to(tl.int64) * D * Dv + state_tile, dS.to(dS_out.dtype.element_ty), mask=state_mask)
        tl.store(dz_out + i_nh.to(tl.int64) * D + offs_k, dz.to(dz_out.dtype.element_ty),
                 mask=mask_k & (offs_k * 0 + i_v == 0))


@triton.jit
def _grads_kernel(q, k, v, do, r_in, g_in, S_states, z_states, dS_states, dz_states, dq, dk, dv, cu,
                  sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sdb, sdt, sdh,
                  sdqb, sdqt, sdqh, sdkb, sdkt, sdkh, sdvb, sdvt, sdvh,
                  T, H, Hk, G, N, D, Dv, NS, scale,
                  C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, FEATURE: tl.constexpr,
                  NORMALIZE: tl.constexpr, CAUSAL: tl.constexpr, VARLEN: tl.constexpr, LOG_N: tl.constexpr,
                  PREC: tl.constexpr, DOT_OPS: tl.constexpr, WRITE_DQ: tl.constexpr, WRITE_DK: tl.constexpr,
                  WRITE_DV: tl.constexpr):
    """dq (each query head of the group), dk, dv (summed over the group) of one chunk of one kv head, from the
    stored states entering the chunk and cotangents leaving it (see the module docstring for the formulas).
    WRITE_DQ / WRITE_DK / WRITE_DV select the outputs: all in one launch, or (configs with ``split``, _TUNE)
    one launch each (dq and dk each recompute the [C, C] block A), so fewer tiles are live per kernel."""
    i_bhk = tl.program_id(0) // NS
    p = tl.program_id(0) % NS
    i_b = i_bhk // Hk
    hk = i_bhk % Hk
    i_n, t0, eos = _chunk_of_slot(cu, p, i_b, T, N, C, VARLEN, LOG_N)
    if t0 >= eos:
        return
    offs_c = tl.arange(0, C)
    offs_t = t0 + offs_c
    mask_t = offs_t < eos
    offs_k = tl.arange(0, BK)
    mask_k = offs_k < D
    causal = offs_c[:, None] >= offs_c[None, :]
    n_vt = tl.cdiv(Dv, BV)
    k_ptr = k + i_b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_ptr = v + i_b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    _, kt = _load_features(k_ptr, offs_t, mask_t, skt, offs_k, mask_k, FEATURE)
    dk_acc = tl.zeros([C, BK], dtype=tl.float32)
    # dq per query head of the group; dk accumulated over the group. (q is loaded only after the Dv loop and
    # the raw inputs are reloaded for φ', to keep fewer [C, BK] tiles live at once; a dv-only launch skips it.)
    for gi in range(0, G if WRITE_DQ or WRITE_DK else 0):
        h = hk * G + gi
        if CAUSAL:
            srow = (i_b.to(tl.int64) * NS + p) * H + h
        else:
            srow = i_n.to(tl.int64) * H + h
        q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        do_ptr = do + i_b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
        if WRITE_DK:
            dz = tl.load(dz_states + srow * D + offs_k, mask=mask_k, other=0.0)
            dk_acc += tl.where(mask_t[:, None], dz[None, :], 0.0)  # 1 dz_cᵀ
        dq_acc = tl.zeros([C, BK], dtype=tl.float32)
        A = tl.zeros([C, C], dtype=tl.float32)
        if NORMALIZE:
            rows = (i_b.to(tl.int64) * T + offs_t) * H + h
            r = tl.load(r_in + rows, mask=mask_t, other=0.0)
            g = tl.load(g_in + rows, mask=mask_t, other=0.0)
            if WRITE_DQ:
                z = tl.load(z_states + srow * D + offs_k, mask=mask_k, other=0.0)
                dq_acc += g[:, None] * z[None, :]  # g z_{c-1}ᵀ
            A += g[:, None]  # the ones column of v'
        for j in range(0, n_vt):
            offs_v = j * BV + tl.arange(0, BV)
            mask_v = offs_v < Dv
            state_ptrs = srow * D * Dv + offs_k[:, None] * Dv + offs_v[None, :]
            state_mask = mask_k[:, None] & mask_v[None, :]
            dnum = _load_rows(do_ptr, offs_t, mask_t, sdt, offs_v, mask_v)
            if NORMALIZE:
                dnum = dnum * r[:, None]
            vv = _load_rows(v_ptr, offs_t, mask_t, svt, offs_v, mask_v)
            if WRITE_DQ:
                S = tl.load(S_states + state_ptrs, mask=state_mask, other=0.0)
                dq_acc += _dot(dnum, tl.trans(S), PREC, DOT_OPS)  # (do·r) S_{c-1}ᵀ
            if WRITE_DK:
                dS = tl.load(dS_states + state_ptrs, mask=state_mask, other=0.0)
                dk_acc += _dot(vv, tl.trans(dS), PREC, DOT_OPS)  # V dS_cᵀ
            if CAUSAL:
                A += _dot(dnum, tl.trans(vv), PREC, DOT_OPS)
        xq, qt = _load_features(q_ptr, offs_t, mask_t, sqt, offs_k, mask_k, FEATURE)
        if CAUSAL:
            A = tl.where(causal, A, 0.0)
            if WRITE_DQ:
                dq_acc += _dot(A, kt, PREC, DOT_OPS)  # intra-chunk: (M∘dO'V'ᵀ) K
            if WRITE_DK:
                dk_acc += _dot(tl.trans(A), qt * scale, PREC, DOT_OPS)  # intra-chunk: (M∘dO'V'ᵀ)ᵀ Q
        if WRITE_DQ:
            dq_out = _times_phi_grad(dq_acc * scale, xq, FEATURE)
            tl.store(dq + i_b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + offs_t[:, None] * sdqt
                     + offs_k[None, :], dq_out.to(dq.dtype.element_ty), mask=mask_t[:, None] & mask_k[None, :])
    if WRITE_DK:
        xk = _load_rows(k_ptr, offs_t, mask_t, skt, offs_k, mask_k)
        dk_out = _times_phi_grad(dk_acc, xk, FEATURE)
        tl.store(dk + i_b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh + offs_t[:, None] * sdkt + offs_k[None, :],
                 dk_out.to(dk.dtype.element_ty), mask=mask_t[:, None] & mask_k[None, :])
    # dv per Dv tile, accumulated over the group
    for j in range(0, n_vt if WRITE_DV else 0):
        offs_v = j * BV + tl.arange(0, BV)
        mask_v = offs_v < Dv
        dv_acc = tl.zeros([C, BV], dtype=tl.float32)
        for gi in range(0, G):
            h = hk * G + gi
            if CAUSAL:
                srow = (i_b.to(tl.int64) * NS + p) * H + h
            else:
                srow = i_n.to(tl.int64) * H + h
            dS = tl.load(dS_states + srow * D * Dv + offs_k[:, None] * Dv + offs_v[None, :],
                         mask=mask_k[:, None] & mask_v[None, :], other=0.0)
            dv_acc += _dot(kt, dS, PREC, DOT_OPS)  # K dS_c
            if CAUSAL:
                q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
                do_ptr = do + i_b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
                _, qt = _load_features(q_ptr, offs_t, mask_t, sqt, offs_k, mask_k, FEATURE)
                qt = qt * scale
                dnum = _load_rows(do_ptr, offs_t, mask_t, sdt, offs_v, mask_v)
                if NORMALIZE:
                    r = tl.load(r_in + (i_b.to(tl.int64) * T + offs_t) * H + h, mask=mask_t, other=0.0)
                    dnum = dnum * r[:, None]
                # (M∘QKᵀ)ᵀ = Mᵀ∘(K Qᵀ), formed directly: K stays in the one operand layout of K dS_c
                kq = tl.where(offs_c[:, None] <= offs_c[None, :], _dot(kt, tl.trans(qt), PREC, DOT_OPS), 0.0)
                dv_acc += _dot(kq, dnum, PREC, DOT_OPS)  # (M∘QKᵀ)ᵀ (do·r)
        tl.store(dv + i_b.to(tl.int64) * sdvb + hk.to(tl.int64) * sdvh + offs_t[:, None] * sdvt + offs_v[None, :],
                 dv_acc.to(dv.dtype.element_ty), mask=mask_t[:, None] & mask_v[None, :])


# --------------------------------------------------------------------------- launchers


def _launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)``; if the GPU lacks the shared memory for the pipelined loops (wide heads),
    once more without software pipelining."""
    try:
        kernel[grid](*args, **kwargs)
    except OutOfResources:
        if kwargs.get("num_stages", 1) <= 1:
            raise
        kernel[grid](*args, **dict(kwargs, num_stages=1))


def _bth_strides(x: Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def _rows(x: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``[B, T, H, F]`` with a unit last-dim stride (copied only if needed) and its (b, t, h) strides."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x, _bth_strides(x)


def _state(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None else x.contiguous()


class _Config:
    """Sizes, blocking and compile-time flags shared by the launches of one call."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], feature_map: str):
        self.B, self.T, self.H, self.D = q.shape
        self.Hk, self.Dv = k.shape[2], v.shape[3]
        self.G = self.H // self.Hk
        self.dtype = q.dtype
        self.device = q.device
        self.varlen = cu_seqlens is not None
        self.N = self.B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        self.BK = max(16, triton.next_power_of_2(self.D))
        # smaller chunks for wide heads, so the [C, BK] tiles (and their shared-memory staging) stay bounded
        chunk = min(CHUNK_SIZE, FP32_CHUNK_SIZE) if q.dtype.itemsize >= 4 else CHUNK_SIZE
        self.C = max(16, min(chunk, chunk * 64 // self.BK))
        # chunk slots per batch row: ⌈T/C⌉, or T // C + N for packed sequences (see the module docstring)
        self.NS = triton.cdiv(self.T, self.C) if cu_seqlens is None else self.T // self.C + self.N
        self.log_n = (self.N - 1).bit_length() if self.varlen else 0
        # the call's Dv tile: every launch's config tile is clamped to it
        bv_max = BV_MAX if self.BK < 128 else max(16, BV_MAX // 2)
        self.BV = max(16, min(triton.next_power_of_2(self.Dv), bv_max))
        # the occupancy rule (kernels/occupancy.py) at the one pass's default tile: causal forward one pass or two
        # passes; the sequential kernels (one pass, chunk states, state cotangents, decode) get a Dv tile BV_seq
        # split until their N·H·⌈Dv/BV_seq⌉ programs fill the SMs (their configs' tiles are clamped to it); the
        # chunk-parallel kernels keep BV (they loop over Dv tiles)
        sms = self.sms = occupancy.sm_count(q.device)
        seq_bv = min(self.BV, self.tune_set("fwd_causal")[0].BV)
        self.launch = occupancy.choose(self.N * self.H, self.B * self.H * self.NS, self.Dv, seq_bv, sms,
                                       chunk_dv_tiles=False,
                                       mode={"two_pass": "chunked"}.get(FWD_MODE, FWD_MODE))
        self.fwd_mode = "two_pass" if self.launch.mode == "chunked" else "one_pass"
        self.BV_seq = occupancy.split_dv(self.N * self.H, self.Dv, seq_bv, sms)
        self.NV = triton.cdiv(self.Dv, self.BV_seq)   # Dv tiles of the one-pass grid (default config)
        self.feature = _FEATURE[feature_map]
        self.prec = FP32_DOT_PRECISION if q.dtype == torch.float32 else HALF_DOT_PRECISION
        self.dot_ops = 0
        if HALF_DOT_OPERANDS == "input" and q.dtype in (torch.bfloat16, torch.float16):
            interpreted = not _common.compiles_for_gpu(q.device)
            self.dot_ops = 2 if q.dtype == torch.float16 else (0 if interpreted else 1)
        elif HALF_DOT_OPERANDS != "float32":
            raise ValueError(f"HALF_DOT_OPERANDS must be 'float32' or 'input', got {HALF_DOT_OPERANDS!r}")
        self.sdt = state_dtype(q.dtype)
        # offsets read by the kernels (contiguous); q is a placeholder pointer when not packed
        self.cu = cu_seqlens.contiguous() if cu_seqlens is not None else q

    def tune_set(self, kind: str) -> list:
        """The configs of launch ``kind`` for this call (TILES[kind] alone when forced)."""
        if TILES is not None and kind in TILES:
            return [TILES[kind]]
        return _tune_set(kind, self.BK, self.dtype)

    def bv(self, tiles: _Tiles, sequential: bool) -> int:
        """The Dv tile of a launch with config ``tiles``: clamped to the call's tile BV and, for a sequential
        grid, split by the occupancy rule until its N·H·⌈Dv/BV⌉ programs fill the SMs."""
        bv = max(16, min(tiles.BV, self.BV))
        return occupancy.split_dv(self.N * self.H, self.Dv, bv, self.sms) if sequential else bv

    def meta(self, tiles: _Tiles, chunked: bool = True, sequential: bool = False) -> dict:
        """Keyword arguments common to the launches (constexprs and launch options) for config ``tiles``;
        ``sequential``: a grid of N·H·⌈Dv/BV⌉ programs (BV split by the occupancy rule)."""
        out = dict(BK=self.BK, BV=self.bv(tiles, sequential), FEATURE=self.feature, num_warps=tiles.num_warps,
                   num_stages=tiles.num_stages if NUM_STAGES is None else NUM_STAGES)
        if chunked:
            out.update(C=self.C, VARLEN=self.varlen, PREC=self.prec, DOT_OPS=self.dot_ops)
        return out

    def tuned(self, kind: str, run, **flags) -> _Tiles:
        """``run(tiles)`` with the autotuned config of ``kind`` (kernels/autotune.py: the default under the
        interpreter, with FLASHTS_AUTOTUNE=0 and in CUDA-graph capture). Key: the kind, head-dim and Dv tiles,
        chunk size, dtype, the launch's flags, and the buckets (next powers of two) of T and of N·H."""
        key = ("linear_attention", kind, self.BK, self.BV, self.C, str(self.dtype), self.dot_ops, self.varlen,
               tuple(sorted(flags.items())), autotune.bucket(self.T), autotune.bucket(self.N * self.H))
        return autotune.launch(key, self.tune_set(kind), run, self.device)


def linear_attention_fwd(q: Tensor, k: Tensor, v: Tensor, S0: Optional[Tensor], z0: Optional[Tensor],
                         cu_seqlens: Optional[Tensor], causal: bool, feature_map: str, normalize: bool,
                         scale: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (o [B, T, H, Dv] in q.dtype, S_T [N, H, D, Dv], z_T [N, H, D]) (float32 states)."""
    cfg = _Config(q, k, v, cu_seqlens, feature_map)
    B, T, H, D, Dv, N, G = cfg.B, cfg.T, cfg.H, cfg.D, cfg.Dv, cfg.N, cfg.G
    q, sq = _rows(q)
    k, sk = _rows(k)
    v, sv = _rows(v)
    S0, z0 = _state(S0), _state(z0)
    has_s0 = S0 is not None
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
    so = (o.stride(0), o.stride(1), o.stride(2))
    S_T = new_empty((N, H, D, Dv), dtype=cfg.sdt, device=q.device)
    z_T = new_empty((N, H, D), dtype=cfg.sdt, device=q.device)
    S0p, z0p = (S0, z0) if has_s0 else (S_T, z_T)  # placeholders, not read without HAS_S0

    def seq_grid(t: _Tiles, rows: int) -> tuple:
        return (triton.cdiv(Dv, cfg.bv(t, True)) * rows,)

    if T == 1 and cu_seqlens is None:  # decoding step (causal or not: one token sees itself)
        cfg.tuned("decode", lambda t: _launch(
            _decode_kernel, seq_grid(t, B * H),
            q, k, v, o, S0p, z0p, S_T, z_T, sq[0], sq[2], sk[0], sk[2], sv[0], sv[2], so[0], so[2],
            H, G, D, Dv, scale, eps,
            NORMALIZE=normalize, HAS_S0=has_s0, **cfg.meta(t, chunked=False, sequential=True)),
            normalize=normalize, has_s0=has_s0)
    elif causal and cfg.fwd_mode == "two_pass":
        S_states = new_empty((B, cfg.NS, H, D, Dv), dtype=torch.float32, device=q.device)
        z_states = new_empty((B, cfg.NS, H, D), dtype=torch.float32, device=q.device)
        cfg.tuned("chunk_state", lambda t: _launch(
            _chunk_state_kernel, seq_grid(t, N * H),
            k, v, S0p, z0p, S_states, z_states, S_T, z_T, cfg.cu, *sk, *sv,
            T, H, G, D, Dv, cfg.NS,
            HAS_S0=has_s0, STORE_CHUNKS=True, STORE_FINAL=True, **cfg.meta(t, sequential=True)),
            has_s0=has_s0, chunks=True, final=True)
        if cfg.NS > 0:
            cfg.tuned("causal_out", lambda t: _launch(
                _causal_out_kernel, (cfg.NS * B * H,),
                q, k, v, o, S_states, z_states, cfg.cu, *sq, *sk, *sv, *so,
                T, H, G, N, D, Dv, cfg.NS, scale, eps,
                NORMALIZE=normalize, LOG_N=cfg.log_n, **cfg.meta(t)),
                normalize=normalize)
    elif causal:
        cfg.tuned("fwd_causal", lambda t: _launch(
            _fwd_causal_kernel, seq_grid(t, N * H),
            q, k, v, o, S0p, z0p, S_T, z_T, cfg.cu, *sq, *sk, *sv, *so,
            T, H, G, D, Dv, scale, eps,
            NORMALIZE=normalize, HAS_S0=has_s0, **cfg.meta(t, sequential=True)),
            normalize=normalize, has_s0=has_s0)
    else:
        cfg.tuned("chunk_state", lambda t: _launch(
            _chunk_state_kernel, seq_grid(t, N * H),
            k, v, S0p, z0p, S_T, z_T, S_T, z_T, cfg.cu, *sk, *sv,
            T, H, G, D, Dv, cfg.NS,
            HAS_S0=has_s0, STORE_CHUNKS=False, STORE_FINAL=True, **cfg.meta(t, sequential=True)),
            has_s0=has_s0, chunks=False, final=True)
        cfg.tuned("apply", lambda t: _launch(
            _apply_kernel, (cfg.NS * B * H,),
            q, o, S_T, z_T, cfg.cu, *sq, *so,
            T, H, N, D, Dv, cfg.NS, scale, eps,
            NORMALIZE=normalize, LOG_N=cfg.log_n, **cfg.meta(t)),
            normalize=normalize)
    return o, S_T, z_T


def linear_attention_bwd(do: Tensor, dS_T: Optional[Tensor], dz_T: Optional[Tensor], q: Tensor, k: Tensor,
                         v: Tensor, o: Tensor, S0: Optional[Tensor], z0: Optional[Tensor],
                         cu_seqlens: Optional[Tensor], causal: bool, feature_map: str, normalize: bool,
                         scale: float, eps: float):
    """-> (dq, dk, dv, dS0, dz0); dS0/dz0 are None when S0 is None."""
    cfg = _Config(q, k, v, cu_seqlens, feature_map)
    B, T, H, Hk, D, Dv, N, NS, G = cfg.B, cfg.T, cfg.H, cfg.Hk, cfg.D, cfg.Dv, cfg.N, cfg.NS, cfg.G
    dev = q.device
    q, sq = _rows(q)
    k, sk = _rows(k)
    v, sv = _rows(v)
    o, so = _rows(o)
    do, sd = _rows(do)
    S0, z0, dS_T, dz_T = _state(S0), _state(z0), _state(dS_T), _state(dz_T)
    has_s0 = S0 is not None
    f32 = torch.float32
    # chunk states: per chunk slot (causal) or one per sequence (non-causal)
    state_rows = (B, NS, H) if causal else (N, H)

    def seq_grid(t: _Tiles) -> tuple:
        return (triton.cdiv(Dv, cfg.bv(t, True)) * N * H,)

    # 1. the state entering every chunk (causal) or the whole-sequence state (non-causal)
    S_states = new_empty(state_rows + (D, Dv), dtype=f32, device=dev)
    z_states = new_empty(state_rows + (D,), dtype=f32, device=dev)
    cfg.tuned("chunk_state", lambda t: _launch(
        _chunk_state_kernel, seq_grid(t),
        k, v, S0 if has_s0 else S_states, z0 if has_s0 else z_states, S_states, z_states, S_states,
        z_states, cfg.cu, *sk, *sv,
        T, H, G, D, Dv, NS,
        HAS_S0=has_s0, STORE_CHUNKS=causal, STORE_FINAL=not causal, **cfg.meta(t, sequential=True)),
        has_s0=has_s0, chunks=causal, final=not causal)

    # 2. r = 1/(den + eps), g = −(do·o)·r per step and head
    if normalize:
        r = new_empty((B, T, H), dtype=f32, device=dev)
        g = new_empty((B, T, H), dtype=f32, device=dev)
        cfg.tuned("norm", lambda t: _launch(
            _norm_kernel, (NS * B * H,),
            q, k, o, do, z_states, r, g, cfg.cu, *sq, *sk, *so, *sd,
            T, H, G, N, D, Dv, NS, scale, eps,
            CAUSAL=causal, LOG_N=cfg.log_n, **cfg.meta(t)),
            causal=causal)
    else:
        r = g = do  # placeholders, not read without NORMALIZE

    # 3. cotangents of the state leaving every chunk (causal) or of the whole-sequence state; dS_0, dz_0
    dS_states = new_empty(state_rows + (D, Dv), dtype=f32, device=dev)
    dz_states = new_empty(state_rows + (D,), dtype=f32, device=dev)
    dS0 = dz0 = None
    if causal and has_s0:
        dS0 = new_empty(S0.shape, dtype=S0.dtype, device=dev)
        dz0 = new_empty(z0.shape, dtype=z0.dtype, device=dev)
    dS_final, dz_final = (dS_states, dz_states) if not causal else (dS0, dz0) if has_s0 else (dS_states, dz_states)
    cfg.tuned("dstate", lambda t: _launch(
        _dstate_kernel, seq_grid(t),
        q, do, r, g, dS_T if dS_T is not None else dS_states, dz_T if dz_T is not None else dz_states,
        dS_states, dz_states, dS_final, dz_final, cfg.cu, *sq, *sd,
        T, H, D, Dv, NS, scale,
        NORMALIZE=normalize, HAS_DS=dS_T is not None, HAS_DZ=dz_T is not None, CAUSAL=causal,
        STORE_FINAL=has_s0 or not causal, **cfg.meta(t, sequential=True)),
        normalize=normalize, has_ds=dS_T is not None, has_dz=dz_T is not None, causal=causal, has_s0=has_s0)

    # 4. dq, dk, dv per chunk (dk, dv summed over each GQA group): one launch, or dq; dk; dv (config ``split``)
    dq = new_empty((B, T, H, D), dtype=q.dtype, device=dev)
    dk = new_empty((B, T, Hk, D), dtype=k.dtype, device=dev)
    dv = new_empty((B, T, Hk, Dv), dtype=v.dtype, device=dev)

    def grads(t: _Tiles) -> None:
        parts = [(True, False, False), (False, True, False), (False, False, True)] if t.split else [(True,) * 3]
        for write_dq, write_dk, write_dv in parts:
            _launch(_grads_kernel, (NS * B * Hk,),
                    q, k, v, do, r, g, S_states, z_states, dS_states, dz_states, dq, dk, dv, cfg.cu,
                    *sq, *sk, *sv, *sd, *_bth_strides(dq), *_bth_strides(dk), *_bth_strides(dv),
                    T, H, Hk, G, N, D, Dv, NS, scale,
                    NORMALIZE=normalize, CAUSAL=causal, LOG_N=cfg.log_n, WRITE_DQ=write_dq, WRITE_DK=write_dk,
                    WRITE_DV=write_dv, **cfg.meta(t))

    cfg.tuned("grads", grads, normalize=normalize, causal=causal)
    return dq, dk, dv, dS0, dz0
