"""Auto-correlation (Autoformer, SPEC §3) for the ``triton`` backend: cuFFT transforms + fused Triton kernels.

Shapes: ``q [B, L, H, E]``, ``k [B, S, H, E]``, ``v [B, S, H, D]`` (E ≠ D allowed). k and v are aligned to L
(zero-padded when L > S, cut to their first L steps otherwise); nothing is copied for that: ``rfft(k, n=L)``
pads/truncates k, and the kernels read v (and write dv) with a row mask ``s < S`` instead.

Forward (C = H·E channels, F = L//2 + 1 frequencies)
    q̂ = rfft(q, n=L), k̂ = rfft(k, n=L)                    torch.fft (cuFFT), float32, [B, F, H, E] complex
    X[b, f] = (1/C) Σ_{h,e} q̂[b,f,h,e] · conj(k̂[b,f,h,e])   ``_cross_spectrum_kernel`` → [B, F] complex
    r = irfft(X, n=L)                                       ONE inverse FFT per sample (mean ∘ irfft = irfft ∘ mean)
    τ = top-K of mean_b r ("train", shared by the batch) or of r[b] ("infer")      torch.topk
    w[b, i] = softmax_i r[b, τ_{b,i}]                                               torch (B·K numbers)
    o[b, t, h, d] = Σ_i w[b, i] · v[b, (t + τ_{b,i}) mod L, h, d]                   ``_aggregate_kernel``
The aggregation never materialises a rolled copy of v: a program owns a (time tile × (h,d) tile) of o, keeps
it in float32 registers and loops over the K delays, reading the shifted rows of v (L2-resident across the
programs of a sample) and writing o once. Delays are read by the kernels from device memory: no host sync.

Backward (indices carry no gradient; autograd is off inside the custom op)
    dv[b, s] = Σ_i w[b,i] · do[b, (s − τ_i) mod L]   (s < L; 0 for L ≤ s < S)   ``_aggregate_kernel``, SIGN = −1
    dw[b, i] = Σ_{t,h,d} do[b,t,h,d] · v[b,(t+τ_i) mod L,h,d] (+ cotangent of the returned weights)
               ``_delay_dots_kernel``: one float32 partial sum per (b, delay, time tile), summed by torch
               afterwards in a fixed order (deterministic: no atomics)
    dz = w ⊙ (dw − Σ_j w_j dw_j)  (softmax backward);  dr[b, τ_{b,i}] = dz[b, i], zero elsewhere ([B, L];
               the K delays of a row are distinct, so a plain scatter, no accumulation)
    r = (1/C) Σ_{h,e} corr(k, q) gives, with d̂r = rfft(dr) (one rfft per sample):
        rfft(dq) = k̂ · d̂r / C              (circular convolution)
        rfft(dk) = q̂ · conj(d̂r) / C        (circular correlation)
    ``_spectrum_grad_kernel`` forms both products in one pass, in place in the (recomputed, private) spectra
    q̂, k̂; then dq = irfft(·, n=L), dk = irfft(·, n=L) mapped back to S steps (first S rows if S < L; zero
    rows after L if S > L).

Blocking / launch (the defaults; small autotune sets beside ``_tune_set``, the in-place spectrum kernel untuned):
* ``_cross_spectrum_kernel``: program per (F tile of BLOCK_F = 16, b); loops over the C channels in tiles of
  BLOCK_C = next_pow2(C) clamped to [16, 64], accumulating [BLOCK_F, BLOCK_C] float32 real/imag partial
  products in registers, then reduces the channel axis once (fixed order: deterministic).
* ``_aggregate_kernel``: program per (time tile of BLOCK_T = 32, (h,d) tile of BLOCK_N = next_pow2(H·D)
  clamped to [16, 128], b); a 32 × 128 float32 accumulator is 32 registers per thread at 4 warps.
* ``_delay_dots_kernel``: program per (chunk of delays, time tile of BLOCK_T = 32 rows, b); for each delay of
  its chunk it loops over (h,d) in tiles of BLOCK_N and writes one partial sum. On a GPU the delays are cut
  into just enough chunks to give ≈ 4 programs per SM (the ``do`` tile is re-read per delay from L1/L2);
  under the interpreter one chunk (cost there is per program and per loop step, not per byte).
* ``_spectrum_grad_kernel``: elementwise, program per (F tile of 16, channel tile of ≤ 64, b).
num_warps = 4 everywhere by default.

Precision: the FFTs and every accumulation in float32 (inputs of any dtype are upcast before the FFTs and in
the loads); o, dq, dk, dv are cast to their input's dtype; weights float32 [B, K]; delays int64 [B, K].
Strides: q and k may have any strides (torch.fft reads them; the spectra are fresh contiguous tensors). For v
and do, (h, d) are flattened into one channel axis with ``flatten(2)`` — a view when the two strides allow it
(contiguous, last-dim-sliced, or stride-0 broadcast tensors), a copy otherwise — and the batch/time/channel
strides are passed to the kernels; offsets are int64. Memory: the spectra q̂, k̂ (~ the size of q, k in float32), o (and
dq, dk, dv) — O(B·H·(E+D)·L); the K shifted copies of v are never made. The spectra are
formed FFT_BLOCK_ELEMENTS at a time (a block of channels: rfft, then consumed — summed into the cross-spectrum,
or turned into dq/dk columns — before the next block), so the FFTs add O(min(B·L·H·E, 2²⁴)) float32 to o, dq,
dk, dv.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from flashts.kernels import autotune
from flashts.ops._common import new_empty

BLOCK_T = 32      # time rows per program (aggregation and delay dots)
BLOCK_N_MAX = 128  # largest (h, d) tile
BLOCK_F = 16      # frequencies per program (spectrum kernels)
BLOCK_C_MAX = 64  # largest channel tile (spectrum kernels)
NUM_WARPS = 4
# Largest B·L·channels (float32 elements) of one FFT block: the spectra of q and k are formed a block of (h, e)
# channels at a time and consumed at once (cross-spectrum sum; gradient products + inverse FFTs), so the peak
# memory of the FFT part is O(FFT_BLOCK_ELEMENTS) rather than O(B·L·H·E). 2²⁴ (64 MB per float32 block) keeps
# the FFTs large enough to run at full speed.
FFT_BLOCK_ELEMENTS = 1 << 24


def _pow2_tile(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(n)))


# Autotune sets (kernels/autotune.py), the default first. Every tuned kernel here is memory-bound (a few
# flops per loaded element), so the levers are the bytes in flight per SM and the grid, not the math:
# * aggregation and delay dots ([BLOCK_T, BLOCK_N] float32 tile, a loop over the K delays or (h, d) tiles):
#   64 time rows at 8 warps (the same 32 accumulators per thread, half the programs and per-program delay /
#   weight loads), and 4 pipeline stages at the default tile (more shifted-row loads in flight across the
#   loop; the stage buffers are 16 KB each, far below 227 KB).
# * cross-spectrum ([BLOCK_F, BLOCK_C] complex partials, a loop over channel tiles): 32 frequencies per program
#   (longer contiguous reads of the spectra, half the programs; B·F/32 is still > 10 waves at the goal shapes),
#   and 8 warps at the default tile (more loads in flight).
# The in-place ``_spectrum_grad_kernel`` is not tuned (a tuning run repeats the launch). No config spills on
# sm_90 (tests/triton_compile.py).
def _tune_set(kind: str, block_a: int, block_b: int) -> list:
    """Configs of ``kind`` ("rows": aggregation / delay dots, blocks (BLOCK_T, BLOCK_N); "spectrum":
    cross-spectrum, blocks (BLOCK_F, BLOCK_C)); configs[0] = the fixed tiles above."""
    C = autotune.Config
    if kind == "rows":
        return autotune.distinct([C(BLOCK_T=block_a, BLOCK_N=block_b, num_warps=NUM_WARPS),
                                  C(BLOCK_T=2 * block_a, BLOCK_N=block_b, num_warps=8),
                                  C(BLOCK_T=block_a, BLOCK_N=block_b, num_warps=NUM_WARPS, num_stages=4)])
    return autotune.distinct([C(BLOCK_F=block_a, BLOCK_C=block_b, num_warps=NUM_WARPS),
                              C(BLOCK_F=2 * block_a, BLOCK_C=block_b, num_warps=NUM_WARPS),
                              C(BLOCK_F=block_a, BLOCK_C=block_b, num_warps=8)])


def _launch(kind: str, key: tuple, blocks: tuple, run, device) -> None:
    """``run(config)`` with the tuned config (GPU) or configs[0] (interpreter)."""
    configs = _tune_set(kind, *blocks)
    if not autotune.sets_active(device):
        configs = configs[:1]
    autotune.launch(("auto_correlation." + key[0],) + key[1:], configs, run, device)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _cross_spectrum_kernel(QF, KF, X, F, C, inv_c,
                           sqb, sqf, sqc, skb, skf, skc, sxb, sxf,
                           BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr):
    """X[b, f] = inv_c · Σ_c QF[b, f, c] · conj(KF[b, f, c]); complex numbers as (re, im) float32 pairs.

    QF, KF point to ``view_as_real`` of [B, F, C] complex64 (real part at +0, imaginary at +1);
    X to [B, F, 2] float32.
    """
    pid_f = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < F
    offs_c = tl.arange(0, BLOCK_C)
    q_rows = QF + b * sqb + offs_f.to(tl.int64)[:, None] * sqf
    k_rows = KF + b * skb + offs_f.to(tl.int64)[:, None] * skf
    acc_re = tl.zeros((BLOCK_F, BLOCK_C), dtype=tl.float32)
    acc_im = tl.zeros((BLOCK_F, BLOCK_C), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cc = c0 + offs_c
        mask = mask_f[:, None] & (cc < C)[None, :]
        q_ptr = q_rows + cc.to(tl.int64)[None, :] * sqc
        k_ptr = k_rows + cc.to(tl.int64)[None, :] * skc
        q_re = tl.load(q_ptr, mask=mask, other=0.0)
        q_im = tl.load(q_ptr + 1, mask=mask, other=0.0)
        k_re = tl.load(k_ptr, mask=mask, other=0.0)
        k_im = tl.load(k_ptr + 1, mask=mask, other=0.0)
        # (q_re + i q_im)(k_re − i k_im)
        acc_re += q_re * k_re + q_im * k_im
        acc_im += q_im * k_re - q_re * k_im
    x_re = tl.sum(acc_re, axis=1) * inv_c
    x_im = tl.sum(acc_im, axis=1) * inv_c
    x_ptr = X + b * sxb + offs_f.to(tl.int64) * sxf
    tl.store(x_ptr, x_re, mask=mask_f)
    tl.store(x_ptr + 1, x_im, mask=mask_f)


@triton.jit
def _spectrum_grad_kernel(QF, KF, DRF, F, C, inv_c,
                          sqb, sqf, sqc, skb, skf, skc, sdb, sdf,
                          BLOCK_F: tl.constexpr, BLOCK_C: tl.constexpr):
    """In place: KF ← KF · DRF · inv_c (spectrum of dq), QF ← QF · conj(DRF) · inv_c (spectrum of dk).

    QF, KF: ``view_as_real`` of [B, F, C] complex64; DRF: [B, F, 2] float32 (rfft of dr, broadcast over c).
    Each element is read and written by the same program, so the in-place update is safe.
    """
    pid_f = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_f = offs_f < F
    mask = mask_f[:, None] & (offs_c < C)[None, :]
    d_ptr = DRF + b * sdb + offs_f.to(tl.int64) * sdf
    d_re = tl.load(d_ptr, mask=mask_f, other=0.0)[:, None] * inv_c
    d_im = tl.load(d_ptr + 1, mask=mask_f, other=0.0)[:, None] * inv_c
    f64 = offs_f.to(tl.int64)[:, None]
    c64 = offs_c.to(tl.int64)[None, :]
    q_ptr = QF + b * sqb + f64 * sqf + c64 * sqc
    k_ptr = KF + b * skb + f64 * skf + c64 * skc
    q_re = tl.load(q_ptr, mask=mask, other=0.0)
    q_im = tl.load(q_ptr + 1, mask=mask, other=0.0)
    k_re = tl.load(k_ptr, mask=mask, other=0.0)
    k_im = tl.load(k_ptr + 1, mask=mask, other=0.0)
    # dq̂ = k̂ · d̂r
    tl.store(k_ptr, k_re * d_re - k_im * d_im, mask=mask)
    tl.store(k_ptr + 1, k_re * d_im + k_im * d_re, mask=mask)
    # dk̂ = q̂ · conj(d̂r)
    tl.store(q_ptr, q_re * d_re + q_im * d_im, mask=mask)
    tl.store(q_ptr + 1, q_im * d_re - q_re * d_im, mask=mask)


@triton.jit
def _aggregate_kernel(X, W, DLY, OUT, L, X_ROWS, T_OUT, N, K,
                      sxb, sxt, sxn, swb, swk, sdb, sdk, sob, sot, son,
                      SIGN: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """OUT[b, t, n] = Σ_{i<K} W[b, i] · X[b, (t + SIGN·DLY[b, i]) mod L, n]  for t < L, 0 for L ≤ t < T_OUT.

    Rows of X at or beyond X_ROWS read as zero (the zero padding of v when S < L). Forward: X = v
    (X_ROWS = S), T_OUT = L, SIGN = +1. dv: X = do (X_ROWS = L), T_OUT = S, SIGN = −1.
    """
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    live_t = offs_t < L
    x_cols = X + b * sxb + offs_n.to(tl.int64)[None, :] * sxn
    dly_b = DLY + b * sdb
    w_b = W + b * swb
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for i in range(K):
        tau = tl.load(dly_b + i * sdk).to(tl.int32)
        w = tl.load(w_b + i * swk)
        # (t + SIGN·τ) mod L for 0 ≤ t, τ < L: one conditional subtraction, no integer division
        if SIGN > 0:
            src = offs_t + tau
        else:
            src = offs_t + (L - tau)
        src = tl.where(src >= L, src - L, src)
        mask = (live_t & (src < X_ROWS))[:, None] & mask_n[None, :]
        x = tl.load(x_cols + src.to(tl.int64)[:, None] * sxt, mask=mask, other=0.0).to(tl.float32)
        acc += w * x
    o_ptr = OUT + b * sob + offs_t.to(tl.int64)[:, None] * sot + offs_n.to(tl.int64)[None, :] * son
    tl.store(o_ptr, acc.to(OUT.dtype.element_ty), mask=(offs_t < T_OUT)[:, None] & mask_n[None, :])


@triton.jit
def _delay_dots_kernel(DO, V, DLY, PART, L, V_ROWS, N, K, N_TILES, K_CHUNKS, K_PER_PROGRAM,
                       sdob, sdot, sdon, svb, svt, svn, sdb, sdk,
                       BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """PART[b, i, j] = Σ_{t in time tile j, n} DO[b, t, n] · V[b, (t + DLY[b, i]) mod L, n]  (float32).

    A program owns time tile j and the delays i of one chunk [c·K_PER_PROGRAM, (c+1)·K_PER_PROGRAM) ∩ [0, K);
    program id 0 = c + K_CHUNKS·j, so programs running side by side read the same ``do`` tile (L2 reuse).
    V rows at or beyond V_ROWS are zero (the padding when S < L).
    """
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = pid % K_CHUNKS
    j = pid // K_CHUNKS
    offs_t = j * BLOCK_T + tl.arange(0, BLOCK_T)
    live_t = offs_t < L
    do_rows = DO + b * sdob + offs_t.to(tl.int64)[:, None] * sdot
    v_batch = V + b * svb
    i_end = tl.minimum(K, (c + 1) * K_PER_PROGRAM)
    dly_b = DLY + b * sdb
    for i in range(c * K_PER_PROGRAM, i_end):
        tau = tl.load(dly_b + i * sdk).to(tl.int32)
        src = offs_t + tau
        src = tl.where(src >= L, src - L, src)
        live_src = (live_t & (src < V_ROWS))[:, None]
        v_rows = v_batch + src.to(tl.int64)[:, None] * svt
        acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = (offs_n < N)[None, :]
            n64 = offs_n.to(tl.int64)[None, :]
            g = tl.load(do_rows + n64 * sdon, mask=live_t[:, None] & mask_n, other=0.0).to(tl.float32)
            x = tl.load(v_rows + n64 * svn, mask=live_src & mask_n, other=0.0).to(tl.float32)
            acc += g * x
        tl.store(PART + (b * K + i) * N_TILES + j, tl.sum(tl.sum(acc, axis=1), axis=0))


# --------------------------------------------------------------------------- launchers


def _channels(x: Tensor) -> Tensor:
    """[B, T, H, D] -> [B, T, H·D] (a view when the strides allow it, else a copy)."""
    return x.flatten(2)


def _channel_blocks(B: int, L: int, C: int) -> list[tuple[int, int]]:
    """[c0, c1) ranges of at most FFT_BLOCK_ELEMENTS // (B·L) channels (at least one) covering C."""
    width = max(1, min(C, FFT_BLOCK_ELEMENTS // max(1, B * L)))
    return [(c0, min(C, c0 + width)) for c0 in range(0, C, width)]


def _spectrum(xc: Tensor, L: int) -> Tensor:
    """rfft along time of xc [B, T, channels] aligned to L (``n=L`` zero-pads or truncates): [B, F, channels]
    complex64 (float32 transforms whatever the input dtype)."""
    return torch.fft.rfft(xc.to(torch.float32), n=L, dim=1)


def _cross_spectrum(q: Tensor, k: Tensor, L: int) -> Tensor:
    """X [B, F] complex64 = mean over the H·E channels of q̂ · conj(k̂), the spectra formed a channel block at a
    time (``_cross_spectrum_kernel`` per block, summed)."""
    B, C = q.shape[0], q.shape[2] * q.shape[3]
    qc, kc = _channels(q), _channels(k)
    x = None
    for c0, c1 in _channel_blocks(B, L, C):
        part = _cross_spectrum_block(_spectrum(qc[:, :, c0:c1], L), _spectrum(kc[:, :, c0:c1], L), 1.0 / C)
        x = part if x is None else x + part
    return torch.view_as_complex(x)


def _cross_spectrum_block(qf: Tensor, kf: Tensor, inv_c: float) -> Tensor:
    """[B, F, 2] float32 = inv_c · Σ over the block's channels of qf · conj(kf) (``_cross_spectrum_kernel``)."""
    B, F, C = qf.shape
    qr, kr = torch.view_as_real(qf), torch.view_as_real(kf)
    x = new_empty((B, F, 2), dtype=torch.float32, device=qf.device)
    block_c = _pow2_tile(C, 16, BLOCK_C_MAX)
    _launch("spectrum", ("cross_spectrum", block_c, autotune.bucket(F), autotune.bucket(B)), (BLOCK_F, block_c),
            lambda c: _cross_spectrum_kernel[(triton.cdiv(F, c.BLOCK_F), B)](
                qr, kr, x, F, C, inv_c,
                qr.stride(0), qr.stride(1), qr.stride(2), kr.stride(0), kr.stride(1), kr.stride(2),
                x.stride(0), x.stride(1), BLOCK_F=c.BLOCK_F, BLOCK_C=c.BLOCK_C, **c.options), qf.device)
    return x


def _aggregate(x: Tensor, weights: Tensor, delays: Tensor, L: int, out_rows: int, sign: int,
               out_dtype: torch.dtype) -> Tensor:
    """out [B, out_rows, H, D] = Σ_i w_i · x shifted by sign·τ_i (mod L), rows ≥ L zero (``_aggregate_kernel``)."""
    B, x_rows, H, D = x.shape
    N = H * D
    K = delays.shape[1]
    xc = _channels(x)
    out = new_empty((B, out_rows, H, D), dtype=out_dtype, device=x.device)
    oc = out.view(B, out_rows, N)
    block_n = _pow2_tile(N, 16, BLOCK_N_MAX)
    key = ("aggregate", str(x.dtype), sign, block_n, autotune.bucket(out_rows), autotune.bucket(B), K)
    _launch("rows", key, (BLOCK_T, block_n), lambda c: _aggregate_kernel[
        (triton.cdiv(out_rows, c.BLOCK_T), triton.cdiv(N, c.BLOCK_N), B)](
            xc, weights, delays, oc, L, x_rows, out_rows, N, K,
            xc.stride(0), xc.stride(1), xc.stride(2), weights.stride(0), weights.stride(1),
            delays.stride(0), delays.stride(1), oc.stride(0), oc.stride(1), oc.stride(2),
            SIGN=sign, BLOCK_T=c.BLOCK_T, BLOCK_N=c.BLOCK_N, **c.options), x.device)
    return out


def _delay_chunks(K: int, programs_without_chunks: int, device: torch.device) -> int:
    """How many chunks to cut the K delays into for ``_delay_dots_kernel``: enough programs to fill the GPU
    (≈ 4 per SM), otherwise as few as possible (each program re-reads its ``do`` tile once per delay from
    L1/L2 anyway). Under the interpreter: one chunk (fewest programs, the cost there is per program)."""
    if device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(K, triton.cdiv(target, programs_without_chunks)))


def _delay_dots(do: Tensor, v: Tensor, delays: Tensor, L: int) -> Tensor:
    """dw [B, K] float32 = <do, v shifted by τ_i> (``_delay_dots_kernel`` partials, then a fixed-order sum)."""
    B, _, H, D = do.shape
    N = H * D
    K = delays.shape[1]
    doc, vc = _channels(do), _channels(v)
    block_n = _pow2_tile(N, 16, BLOCK_N_MAX)
    parts: list = []

    def run(c):  # the time tile sets the grid and the shape of the per-tile partial sums
        n_tiles = triton.cdiv(L, c.BLOCK_T)
        k_chunks = _delay_chunks(K, B * n_tiles, do.device)
        k_per_program = triton.cdiv(K, k_chunks)
        k_chunks = triton.cdiv(K, k_per_program)
        part = new_empty((B, K, n_tiles), dtype=torch.float32, device=do.device)
        _delay_dots_kernel[(k_chunks * n_tiles, B)](
            doc, vc, delays, part, L, v.shape[1], N, K, n_tiles, k_chunks, k_per_program,
            doc.stride(0), doc.stride(1), doc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
            delays.stride(0), delays.stride(1), BLOCK_T=c.BLOCK_T, BLOCK_N=c.BLOCK_N, **c.options)
        parts[:] = [part]
    key = ("delay_dots", str(do.dtype), block_n, autotune.bucket(L), autotune.bucket(B), K)
    _launch("rows", key, (BLOCK_T, block_n), run, do.device)
    return parts[0].sum(dim=-1)


def _spectrum_grads_(qf: Tensor, kf: Tensor, drf: Tensor, inv_c: float) -> None:
    """In place: kf ← kf · drf · inv_c, qf ← qf · conj(drf) · inv_c (``_spectrum_grad_kernel``)."""
    B, F, C = qf.shape
    qr, kr = torch.view_as_real(qf), torch.view_as_real(kf)
    dr = torch.view_as_real(drf.contiguous())
    block_c = _pow2_tile(C, 16, BLOCK_C_MAX)
    grid = (triton.cdiv(F, BLOCK_F), triton.cdiv(C, block_c), B)
    _spectrum_grad_kernel[grid](qr, kr, dr, F, C, inv_c,
                                qr.stride(0), qr.stride(1), qr.stride(2), kr.stride(0), kr.stride(1), kr.stride(2),
                                dr.stride(0), dr.stride(1),
                                BLOCK_F=BLOCK_F, BLOCK_C=block_c, num_warps=NUM_WARPS)


def _select(r: Tensor, top_k: int, mode: str) -> tuple[Tensor, Tensor]:
    """delays [B, K] int64 (descending correlation, as ``torch.topk``) and the selected r values [B, K]."""
    B = r.shape[0]
    if mode == "train":
        delays = torch.topk(r.mean(dim=0), top_k, dim=-1).indices.unsqueeze(0).expand(B, top_k).contiguous()
    else:
        delays = torch.topk(r, top_k, dim=-1).indices.contiguous()
    return delays, torch.gather(r, 1, delays)


def _unalign(dx: Tensor, S: int, dtype: torch.dtype) -> Tensor:
    """Gradient of the alignment: [B, L, ...] (our own tensor) -> new [B, S, ...] in ``dtype``."""
    B, L = dx.shape[:2]
    if S == L:
        return dx.to(dtype)
    if S < L:
        return dx[:, :S].to(dtype, copy=True).contiguous()  # padding steps have no input
    out = new_empty((B, S) + tuple(dx.shape[2:]), dtype=dtype, device=dx.device)
    out[:, :L] = dx
    out[:, L:] = 0  # steps dropped by the truncation get no gradient
    return out


# --------------------------------------------------------------------------- backend entry points


def auto_correlation_fwd(q: Tensor, k: Tensor, v: Tensor, top_k: int, mode: str):
    """-> (o [B, L, H, D] in q.dtype, delays [B, K] int64, weights [B, K] float32)."""
    L = q.shape[1]
    r = torch.fft.irfft(_cross_spectrum(q, k, L), n=L, dim=-1)  # [B, L] float32
    delays, r_sel = _select(r, top_k, mode)
    weights = torch.softmax(r_sel, dim=-1)
    o = _aggregate(v, weights, delays, L, L, +1, q.dtype)
    return o, delays, weights


def auto_correlation_bwd(do: Tensor, dweights: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, delays: Tensor,
                         weights: Tensor, top_k: int, mode: str):
    """-> (dq [B, L, H, E], dk [B, S, H, E], dv [B, S, H, D]), each in its input's dtype."""
    B, L, H, E = q.shape
    S = k.shape[1]
    w = weights.to(torch.float32).contiguous()
    delays = delays.contiguous()

    # dv: the aggregation transposed (do shifted back by each τ), written straight at S rows
    dv = _aggregate(do, w, delays, L, S, -1, v.dtype)

    # dw, plus the cotangent of the returned weights; softmax backward; scatter to the selected delays of r
    dw = _delay_dots(do, v, delays, L)
    if dweights is not None:
        dw = dw + dweights.to(torch.float32)
    dz = w * (dw - (w * dw).sum(dim=-1, keepdim=True))
    dr = torch.zeros((B, L), dtype=torch.float32, device=q.device).scatter_(1, delays, dz)  # distinct per row

    # r = (1/C) Σ_{h,e} corr(k, q): rfft(dq) = k̂·d̂r/C, rfft(dk) = q̂·conj(d̂r)/C, one rfft of dr per sample
    # a block of channels at a time: recompute its spectra, form both products in place, transform back
    C = H * E
    drf = torch.fft.rfft(dr, dim=-1)
    qc, kc = _channels(q), _channels(k)
    dq = new_empty((B, L, H, E), dtype=q.dtype, device=q.device)
    dk_al = new_empty((B, L, H, E), dtype=k.dtype, device=q.device)
    dq_c, dk_c = dq.view(B, L, C), dk_al.view(B, L, C)
    for c0, c1 in _channel_blocks(B, L, C):
        qf, kf = _spectrum(qc[:, :, c0:c1], L), _spectrum(kc[:, :, c0:c1], L)
        _spectrum_grads_(qf, kf, drf, 1.0 / C)
        dq_c[:, :, c0:c1] = torch.fft.irfft(kf, n=L, dim=1)
        dk_c[:, :, c0:c1] = torch.fft.irfft(qf, n=L, dim=1)
        del qf, kf
    return dq, _unalign(dk_al, S, k.dtype), dv
