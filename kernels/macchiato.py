"""Latte Macchiato (SPEC §7) for the ``triton`` backend: the fused forward kernel.

Math. Per row (sequence, head) and token t, with p(·|t) = softmax(mix_t) over L+1 entries::

    A_t = Σ_{j=t−left..t} softmax_j(scale·q_t·k_j) v_j            (causal sliding window; left = −1: all j ≤ t)
    Y_t = Σ_l softmax_l(mix_{t,1:}) · G_{t,l},  G_{t,l} = Σ_{s≤t} e^{lk_{s,l}} v_s / Σ_{s≤t} e^{lk_{s,l}}   (Latte)
    y_t = g_t A_t + h_t Y_t,   g_t = p(0|t),  h_t = Σ_{l≥1} p(l|t)   (= SPEC's p(0|t)A_t + Σ_l p(l|t)G_{t,l})

One pass per (query block of C tokens, head, Dv tile) — ``_fwd_kernel``, grid (B·H·NS, ⌈Dv/BV⌉), NS chunk
slots of C steps (packed sequences: the slot layout and binary search of ``kernels/prefix_scan.py``):

1. window: the block's C queries against the keys [max(bos, t0 − left), t0 + C) in tiles of BN, online softmax
   (running max m, Σe^{s−m}, Σe^{s−m}v in registers; scores masked to the window BEFORE the exp; a row that has
   seen no key yet subtracts 0, never −∞) → A [C, BV] and lse [C].
2. latent: the Latte state entering the block (m, α, S) [BL], [BL, BV] comes from the chunk summaries + light
   sequential scan of ``kernels/prefix_scan.py`` (``_entering_states``: ``_chunk_sum_kernel`` in parallel over
   chunks, ``_state_scan_kernel`` only ``_combine`` per chunk, also giving the final state), and the block's
   outputs from its ``_chunk_output`` helper (matrix form, or the exact step-by-step walk when the running max
   rises by more than RISE_LIMIT inside the chunk) → Y [C, BV].
3. mix: g, h from the block's mix rows (max-shifted exponentials, h summed over l ≥ 1, not 1 − g) and
   y = g A + h Y, written with A, lse and Y (the backward's inputs).

So one launch writes the output; the two state kernels before it touch only the [NS, L] and [NS, L, Dv] chunk
states. The window cache of a streaming call (``initial_state``) is not read by this kernel: such calls (decode
steps, chunked prefill) go through the composed path (``flashts/ops/_macchiato_triton.py``).

Backward: composed, not fused (``flashts/torch_ops/macchiato.py``: the sliding-window backward of dA = g·dy,
the Latte backward of dY = h·dy and the gate's gradient). Why not one kernel: the two backwards traverse time
in opposite, incompatible orders — the window's dK/dV are a key-major pass over the band (FlashAttention-2),
the Latte backward a reverse scan over chunks carrying (dS, dα) — and they share only the reads of v and dy.
Counting per token and head (elements; Dv = D = d, window w = left + 1): the window backward does ~4·w·d
multiply-adds per token (recomputing scores and P, dV, dP, dQ/dK) and reads q, k, v, dy, A (5d); the Latte
backward ~(C + 2L)·d; the composition adds the gate's reads of A, Y, dy and writes/reads of dA, dY, ≈ 7d
elements. For w ≥ 64 that is < 3 % of the window backward's FLOPs and about the bytes it already moves, so
a fused backward would save little and cost a kernel that no longer reuses the two tuned ones.

Tiles: C = BLOCK_T (GPU) / 16 (interpreter) query rows per program (a power of two ≥ 16: the [C, C] products
of the latent part); BN = BLOCK_N keys per window tile; BD = next power of two ≥ max(16, D); BL, BV as in
``kernels/prefix_scan.py`` (``_Config``). Float32 arithmetic throughout (every load upcast, so bf16/fp16 run
the same under the interpreter); tl.dot precision "ieee" for float32 inputs, "tf32" for half inputs. Compiled
for sm_90 in CI (tests/triton_compile.py, every config of ``_tune_set``); not yet timed on a GPU.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from flashts.kernels import autotune
from flashts.kernels import prefix_scan as _ps
from flashts.kernels.linear_attention import _chunk_of_slot
from flashts.ops import _common
from flashts.ops._common import new_empty

# Query rows per program on a GPU (a power of two ≥ 16); the interpreter uses 16.
BLOCK_T = 32
# Keys per window tile on a GPU; the interpreter uses 16.
BLOCK_N = 32


def _tune_set(bn: int, warps: int, window: int) -> list:
    """Autotune set of the fused forward (kernels/autotune.py), the default first. The chunk length C is fixed
    by the chunk states the prefix scan computes before this launch, so the levers are the window tile and
    the launch shape: BN = 2·BLOCK_N halves the key-tile steps of wide windows (only offered when the window
    spans ≥ 2 default tiles); the other warp count (the [C, BN] scores and [C, BV] accumulators are small at 4
    warps, but the latent products want 8 at large BL·BV); 2 stages (fewer buffered key/value tiles in shared
    memory next to the latent tiles)."""
    C = autotune.Config
    alts = [C(BN=bn, num_warps=12 - warps), C(BN=bn, num_warps=warps, num_stages=2)]
    if window >= 2 * bn:
        alts.insert(0, C(BN=2 * bn, num_warps=8))
    return autotune.distinct([C(BN=bn, num_warps=warps)] + alts)


@triton.jit
def _fwd_kernel(q, k, v, mix, lk, o, A, Y, lse, m_ch, u_ch, w_ch, cu,
                sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, smb, smt, smh, slb, slt, slh, sob, sot, soh,
                T, H, L, D, Dv, N, NS, left, scale,
                C: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BL: tl.constexpr, BE: tl.constexpr,
                BV: tl.constexpr, PREC: tl.constexpr, RISE_LIMIT: tl.constexpr, UNBOUNDED: tl.constexpr,
                VARLEN: tl.constexpr, LOG_N: tl.constexpr):
    """One chunk slot (C query rows), one head, one Dv tile: window softmax + latent chunk output + mix."""
    slot_pid = tl.program_id(0)
    i_v = tl.program_id(1)
    # latent tiles: logits a = latent_k, weights p = softmax over mix[..., 1:] (pointer offset by one column)
    (i_b, h, t0, eos, offs_c, offs_l, offs_v, offs_t, mask_l, mask_v, mask_t, crow, a, p, vv) = _ps._slot_tiles(
        mix + 1, lk, v, cu, slot_pid, i_v, smb, smt, smh, slb, slt, slh, svb, svt, svh,
        T, H, L, L, Dv, N, NS, 1.0, C, BL, 16, BV, False, VARLEN, LOG_N)
    if t0 < eos:
        # ---- latent part: the chunk's outputs from the state entering it
        m_in, u_in, w_in = _ps._chunk_state(m_ch, u_ch, w_ch, crow, offs_v, mask_l, mask_v, Dv)
        c_max = tl.max(a, 0)
        e_c = _ps._exp_diff(a, c_max[None, :])
        y_lat = _ps._chunk_output(a, p, vv, m_in, u_in, w_in, c_max, e_c, offs_c, mask_l, C, True, PREC,
                                  RISE_LIMIT)
        # ---- window part: online softmax over keys [lo, hi)
        if VARLEN:
            i_n, _t, _e = _chunk_of_slot(cu, slot_pid % NS, i_b, T, N, C, VARLEN, LOG_N)
            bos = tl.load(cu + i_n).to(tl.int64)
        else:
            bos = (t0 * 0).to(tl.int64)
        if UNBOUNDED:
            lo = bos
        else:
            lo = tl.maximum(bos, t0 - left)
        hi = tl.minimum(eos, t0 + C)
        offs_d = tl.arange(0, BD)
        mask_d = offs_d < D
        q_ptr = q + i_b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
        k_ptr = k + i_b.to(tl.int64) * skb + h.to(tl.int64) * skh
        v_ptr = v + i_b.to(tl.int64) * svb + h.to(tl.int64) * svh
        qt = tl.load(q_ptr + offs_t[:, None] * sqt + offs_d[None, :], mask=mask_t[:, None] & mask_d[None, :],
                     other=0.0).to(tl.float32) * scale
        m_i = tl.full([C], float("-inf"), tl.float32)
        l_i = tl.zeros([C], dtype=tl.float32)
        acc = tl.zeros([C, BV], dtype=tl.float32)
        offs_bn = tl.arange(0, BN)
        for j0 in range(lo, hi, BN):
            offs_n = j0 + offs_bn
            mask_n = offs_n < hi
            kt = tl.load(k_ptr + offs_n[:, None] * skt + offs_d[None, :], mask=mask_n[:, None] & mask_d[None, :],
                         other=0.0).to(tl.float32)
            s = tl.dot(qt, tl.trans(kt), input_precision=PREC)                      # [C, BN]
            ok = mask_n[None, :] & (offs_n[None, :] <= offs_t[:, None])
            if not UNBOUNDED:
                ok = ok & (offs_n[None, :] >= offs_t[:, None] - left)
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            pe = tl.exp(s - m_use[:, None])
            rescale = tl.exp(m_i - m_use)
            vt = tl.load(v_ptr + offs_n[:, None] * svt + offs_v[None, :], mask=mask_n[:, None] & mask_v[None, :],
                         other=0.0).to(tl.float32)
            l_i = l_i * rescale + tl.sum(pe, 1)
            acc = acc * rescale[:, None] + tl.dot(pe, vt, input_precision=PREC)
            m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)                    # rows past the sequence end see no key
        a_loc = acc / l_safe[:, None]
        lse_rows = tl.where(l_i > 0, m_i + tl.log(l_safe), 0.0)
        # ---- mix: g = p(0|t), h = Σ_{l≥1} p(l|t)
        offs_e = tl.arange(0, BE)
        mask_e = offs_e < L + 1
        m_ptr = mix + i_b.to(tl.int64) * smb + h.to(tl.int64) * smh
        z = tl.load(m_ptr + offs_t[:, None] * smt + offs_e[None, :], mask=mask_t[:, None] & mask_e[None, :],
                    other=0.0).to(tl.float32)
        z = tl.where(mask_e[None, :], z, float("-inf"))
        ez = tl.exp(z - tl.max(z, 1)[:, None])
        e0 = tl.sum(tl.where(offs_e[None, :] == 0, ez, 0.0), 1)
        rest = tl.sum(tl.where(offs_e[None, :] >= 1, ez, 0.0), 1)
        g = e0 / (e0 + rest)
        hh = rest / (e0 + rest)
        out = g[:, None] * a_loc + hh[:, None] * y_lat
        rows = i_b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_t[:, None] * sot + offs_v[None, :]
        mask_tv = mask_t[:, None] & mask_v[None, :]
        tl.store(o + rows, out.to(o.dtype.element_ty), mask=mask_tv)
        tl.store(A + rows, a_loc.to(A.dtype.element_ty), mask=mask_tv)
        tl.store(Y + rows, y_lat.to(Y.dtype.element_ty), mask=mask_tv)
        tl.store(lse + (i_b.to(tl.int64) * H + h) * T + offs_t, lse_rows, mask=mask_t & (offs_c * 0 + i_v == 0))


def _rows(x: Tensor):
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x, (x.stride(0), x.stride(1), x.stride(2))


def latte_macchiato_fused_fwd(q: Tensor, k: Tensor, v: Tensor, mix: Tensor, latent_k: Tensor, m0: Optional[Tensor],
                              a0: Optional[Tensor], S0: Optional[Tensor], cu_seqlens: Optional[Tensor], left: int,
                              scale: float):
    """-> (o, A, Y [B,T,H,Dv] in q.dtype, lse [B,H,T] float32, m_T, a_T [N,H,L], S_T [N,H,L,Dv] float32).
    No window cache (the caller routes streaming calls with a cache elsewhere)."""
    B, T, H, D = q.shape
    L, Dv = latent_k.shape[-1], v.shape[-1]
    dev = q.device
    gpu = _common.compiles_for_gpu(dev)
    q, sq = _rows(q)
    k, sk = _rows(k)
    v, sv = _rows(v)
    lk, sl = _rows(latent_k)
    mix, sm = _rows(mix)
    mix1 = mix[..., 1:]                                       # a view: unit last stride, no copy
    cfg = _ps._Config(lk, v, L, L, cu_seqlens, aaren=False)
    cfg.C = BLOCK_T if gpu else 16
    N = cfg.N
    cfg.NS = triton.cdiv(T, cfg.C) if cu_seqlens is None else T // cfg.C + N
    cfg.prec = _ps.FP32_DOT_PRECISION if q.dtype == torch.float32 else _ps.HALF_DOT_PRECISION
    m_T = new_empty((N, H, L), dtype=torch.float32, device=dev)
    u_T = new_empty((N, H, L), dtype=torch.float32, device=dev)
    w_T = new_empty((N, H, L, Dv), dtype=torch.float32, device=dev)
    has_state = m0 is not None
    m_ch, u_ch, w_ch = _ps._entering_states(
        cfg, mix1, sm, lk, sl, v, sv, _ps._state(m0, (N, H, L)), _ps._state(a0, (N, H, L)),
        _ps._state(S0, (N, H, L, Dv)), has_state, 1.0, final=(m_T, u_T, w_T))
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=dev)
    A = new_empty((B, T, H, Dv), dtype=q.dtype, device=dev)
    Y = new_empty((B, T, H, Dv), dtype=q.dtype, device=dev)
    lse = new_empty((B, H, T), dtype=torch.float32, device=dev)
    so = (o.stride(0), o.stride(1), o.stride(2))
    if cfg.NS > 0:
        bd = max(16, triton.next_power_of_2(D))
        window = T if left < 0 else left + 1
        configs = _tune_set(BLOCK_N if autotune.sets_active(dev) else 16, cfg.num_warps, window)
        if not autotune.sets_active(dev):
            configs = configs[:1]
        key = ("macchiato.fwd", str(q.dtype), bd, cfg.BL, cfg.BV, cfg.C, left < 0, autotune.bucket(window),
               autotune.bucket(T))
        autotune.launch(key, configs, lambda c: _fwd_kernel[(B * H * cfg.NS, cfg.NV)](
            q, k, v, mix, lk, o, A, Y, lse, m_ch, u_ch, w_ch, cfg.cu,
            *sq, *sk, *sv, *sm, *sl, *so, T, H, L, D, Dv, N, cfg.NS, max(left, 0), scale,
            C=cfg.C, BN=c.BN, BD=bd, BL=cfg.BL, BE=triton.next_power_of_2(L + 1), BV=cfg.BV, PREC=cfg.prec,
            RISE_LIMIT=_ps.RISE_LIMIT, UNBOUNDED=left < 0, VARLEN=cfg.varlen, LOG_N=cfg.log_n, **c.options), dev)
    return o, A, Y, lse, m_T, u_T, w_T
