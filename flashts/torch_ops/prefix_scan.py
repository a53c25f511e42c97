"""Aaren (SPEC §4) and Latte (SPEC §5), torch backend: one chunked causal "prefix softmax mean" core.

Math (shared core). Per row g (a (batch, head) pair), given logits a ``[T, L]``, mixing weights p ``[T, L]``,
values v ``[T, Dv]`` and an initial state (m0, α0, S0) per latent l (``[L]``, ``[L]``, ``[L, Dv]``)::

    M_{t,l}   = max(m0_l, max_{s≤t} a_{s,l})                                   (running max, no gradient)
    den_{t,l} = α0_l e^{m0_l − M_{t,l}} + Σ_{s≤t} e^{a_{s,l} − M_{t,l}}
    num_{t,l} = S0_l e^{m0_l − M_{t,l}} + Σ_{s≤t} e^{a_{s,l} − M_{t,l}} v_s
    y_t       = Σ_l p_{t,l} · num_{t,l} / den_{t,l}
    final state (m_T, α_T, S_T) = (M_{T−1}, den_{T−1}, num_{T−1})

Aaren is L = 1, a_t = scale·(q·k_t), p = 1. Causal Latte is a = k (the latent logits), p = softmax_l(q_t).
Terms with m0 = −∞ (the empty state) are 0; e^{x − m} is always formed with m ≥ x and the pair
(−∞, −∞) gives 0, never NaN (:func:`_exp_diff`).

Paths, fastest first (each exact up to rounding; the choice is a data-dependent check, one host sync):
* T = 1 with no ``cu_seqlens``: the streaming step of :mod:`flashts.torch_ops.step` (a dozen aten ops).
* Aaren, no ``cu_seqlens``: :class:`_AarenGlobal`, one reference max for the whole sequence and two cumulative
  sums, when the logits' spread above the first running max is ≤ FAST_SPREAD (40 in float32, 300 in float64).
* :class:`_Fast`: one reference max per FAST_CHUNK-step chunk and latent, intra-chunk products as batched
  matmuls, hand backward, when every chunk's spread is ≤ FAST_SPREAD.
* Otherwise (e.g. ±1e4 logits) the running-max tile form below, which never forms a positive exponent.
All three chunked paths share the work-efficient (O(n), not O(n log n)) scan of the chunk states.

Chunking (forward, running-max tiles). Time is cut into chunks of C = min(CHUNK, T) steps (the last padded with a = −∞,
p = 0, v = 0, which contribute exactly 0).
1. Chunk summaries, all chunks at once: (max a, Σ e^{a−max}, Σ e^{a−max} v) per chunk and latent.
2. The states entering each chunk: an inclusive work-efficient scan (two-level blocked, O(n) combines) over
   [initial state, chunk 0, …, chunk n−1] with the associative online-softmax combine
   m = max(m_A, m_B), α = α_A e^{m_A−m} + α_B e^{m_B−m}, S likewise. Element j is the state entering chunk j,
   element n the final state.
3. Inside a chunk, a ``[C(t), C(s), L]`` tile W = e^{a_s − M_t} (masked to s ≤ t BEFORE the exp, so no
   positive exponent is ever formed), den_t = Σ_s W + α_in e^{m_in−M_t}, c = p / den,
   A[t, s] = Σ_l c_{t,l} W[t,s,l] and y = A v + Σ_l c_{t,l} e^{m_in−M_t} S_in,l.
   Chunks are processed in blocks holding at most ``TILE_ELEMENTS`` tile elements (over rows and chunks),
   so memory is O(T·(L + Dv)) plus one bounded tile, never T×T nor T×C×L for a long sequence at once.

Backward (by hand; maxima M held fixed, as the state (m, α, S) stands for (α e^m, S e^m)). With the
cotangent dy_t and the final-state cotangents (dα_T, dS_T)::

    c_{t,l} = p_{t,l}/den_{t,l}            z_{t,l} = dy_t · mean_{t,l}   (mean = num/den; never stored)
    dnum_{t,l} = c_{t,l} dy_t  (=: h_t)     dden_{t,l} = −c_{t,l} z_{t,l}  (=: r_t)      dp_{t,l} = z_{t,l}
    (plus dS_T added to h and dα_T added to r at the last step, where M = m_T)
    dv_s      = Σ_l Σ_{t≥s} e^{a_{s,l} − M_{t,l}} h_{t,l}
    da_{s,l}  = Σ_{t≥s} e^{a_{s,l} − M_{t,l}} (h_{t,l}·v_s + r_{t,l})
    dS0_l     = Σ_t e^{m0_l − M_{t,l}} h_{t,l},   dα0_l = Σ_t e^{m0_l − M_{t,l}} r_{t,l}

The suffix sums Σ_{t≥s} e^{x − M_t}(·) are a reverse scan. Per chunk j with entering max μ_j = m_in,j the
summary Q_j = Σ_{t∈j} e^{μ_j − M_t}(h_t, r_t); element n is (dS_T, dα_T) with μ_n = m_T. The suffix scan
E_j = Q_j + e^{μ_j − μ_{j+1}} E_{j+1} (factors ≤ 1 since μ is non-decreasing) gives E_0 = (dS0, dα0) and,
for chunk j, the contribution of all later time E_{j+1}, referred to μ_{j+1} = the max at the end of chunk j
(≥ every a_s of chunk j). Inside a chunk the tile gives dv = Aᵀ dy + Σ_l e^{a_s−μ_{j+1}} E^h_{j+1} and
da_{s,l} = Σ_t c_{t,l} W[t,s,l] (dy_t·v_s − z_{t,l}) + e^{a_s−μ_{j+1}} (E^h_{j+1}·v_s + E^r_{j+1}).
The backward recomputes the entering states (steps 1–2 above), then visits the blocks from the last to the
first, building each tile once: den, c, z → the block's Q_j → a Hillis–Steele suffix scan over the block's
chunks plus the carried E of the blocks after it → dv, da; E of the block's first chunk is carried on.
Aaren: dq = scale·Σ_t da_t k_t (summed over the batch when q is ``[H, D]``), dk_t = scale·da_t q.
Latte: dq = p ⊙ (dp − Σ_l p dp) (softmax Jacobian).

Latte bidirectional (``causal=False``, no state): per-latent softmax over the whole sequence as a reduction,
π_{s,l} = e^{k_{s,l} − max_l} / Σ, mean_l = Σ_s π_{s,l} v_s, y_t = Σ_l p_{t,l} mean_l. Backward:
G_l = Σ_t p_{t,l} dy_t, dp_{t,l} = dy_t·mean_l, dv_s = Σ_l π_{s,l} G_l, dk_{s,l} = π_{s,l}(v_s − mean_l)·G_l.
Memory O(T·(L + Dv)).

``cu_seqlens``: a Python loop over the packed sequences (B == 1), each run through the same core with its own
state row; a zero-length sequence returns its initial state (and passes the final-state cotangents back to it).
Compute dtype: float64 for float64 inputs, float32 otherwise; outputs in the input dtype, states in
``state_dtype`` (float32, float64 for float64 inputs), gradients in each input's dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops._common import new_empty, state_dtype
from .step import aaren_step, latte_step

# Time steps per chunk (module constant; the tests shrink it so that many chunks are exercised).
CHUNK = 16
# Upper bound on the elements of one [rows, chunks, C, C, L] tile processed at once (2^19: 4 MB in float64).
TILE_ELEMENTS = 1 << 19

_NEG_INF = float("-inf")


# ------------------------------------------------------------------------------------------------ helpers

def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exp_diff(x: Tensor, m: Tensor) -> Tensor:
    """e^{x − m} for m ≥ x (broadcasting); 0 where x = −∞, including where m = −∞ too (no NaN)."""
    return torch.exp(x - m.clamp_min(torch.finfo(m.dtype).min))   # m = −∞ only where x = −∞: e^{−∞} = 0


def _heads_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, T, H, X]`` -> contiguous ``[B, H, T, X]`` in ``dtype``."""
    return x.permute(0, 2, 1, 3).to(dtype, memory_format=torch.contiguous_format)


def _time_major(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``[B, H, T, X]`` -> new contiguous ``[B, T, H, X]`` in ``dtype``."""
    return x.permute(0, 2, 1, 3).to(dtype).contiguous()


def _segments(B: int, T: int, cu_seqlens: Optional[Tensor]):
    """(batch slice, time slice, state slice) per independent run of the core."""
    if cu_seqlens is None:
        return [(slice(0, B), slice(0, T), slice(0, B))]
    bounds = [int(x) for x in cu_seqlens.tolist()]
    return [(slice(0, 1), slice(t0, t1), slice(n, n + 1)) for n, (t0, t1) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _pad_time(x: Tensor, Tp: int, value: float) -> Tensor:
    """Pad ``[G, T, X]`` along time to ``Tp`` with ``value``."""
    T = x.shape[1]
    return x if Tp == T else F.pad(x, (0, 0, 0, Tp - T), value=value)


def _blocks(G: int, n: int, C: int, L: int):
    """(row slice, chunk slice) blocks whose [rows, chunks, C, C, L] tile stays within TILE_ELEMENTS."""
    per_chunk = C * C * L
    if G * per_chunk <= TILE_ELEMENTS:
        nb = max(1, TILE_ELEMENTS // (G * per_chunk))
        return [(slice(0, G), slice(j, min(j + nb, n))) for j in range(0, n, nb)]
    gb = max(1, TILE_ELEMENTS // per_chunk)
    return [(slice(g, min(g + gb, G)), slice(j, j + 1)) for g in range(0, G, gb) for j in range(n)]


def _tile(a_blk: Tensor, M_blk: Tensor, upper: Tensor) -> Tensor:
    """W[.., t, s, l] = e^{a_s − M_t} for s ≤ t, else 0: ``[g, nb, C, L]`` x2 -> ``[g, nb, C(t), C(s), L]``.

    ``upper`` ``[C, C, 1]`` is True where s > t; those entries become −∞ before the exp."""
    diff = a_blk.unsqueeze(2) - M_blk.unsqueeze(3)
    diff.masked_fill_(upper, _NEG_INF)
    return diff.exp_()


def _combine(mA: Tensor, uA: Tensor, wA: Tensor, mB: Tensor, uB: Tensor, wB: Tensor):
    """The online-softmax combine of state A (earlier) and B: m = max, u/w rescaled to m (never NaN)."""
    mn = torch.maximum(mA, mB)
    fA, fB = _exp_diff(mA, mn), _exp_diff(mB, mn)
    return mn, uA * fA + uB * fB, wA * fA.unsqueeze(-1) + wB * fB.unsqueeze(-1)


# Below this many elements the state scan is one sequential loop; above, a two-level blocked scan.
_SEQ_SCAN = 24


def _scan_states(m: Tensor, u: Tensor, w: Tensor):
    """Inclusive scan over dim 1 of states ``m, u [G, n, L]``, ``w [G, n, L, Dv]`` with :func:`_combine`.

    Work-efficient (O(n) combines, no log n factor): the n elements are cut into nb blocks of b ≈ √n; each
    block's total is a plain reduction against the block's max (every exponent ≤ 0); the totals are scanned
    (recursively); then one loop over the b positions of a block, vectorised over all blocks, carries each
    block's entering state through it. Python work O(√n) aten calls."""
    G, n = m.shape[:2]
    if n <= _SEQ_SCAN:
        om, ou, ow = torch.empty_like(m), torch.empty_like(u), torch.empty_like(w)
        cm, cu, cw = m[:, 0], u[:, 0], w[:, 0]
        om[:, 0], ou[:, 0], ow[:, 0] = cm, cu, cw
        for i in range(1, n):
            cm, cu, cw = _combine(cm, cu, cw, m[:, i], u[:, i], w[:, i])
            om[:, i], ou[:, i], ow[:, i] = cm, cu, cw
        return om, ou, ow
    b = math.isqrt(n - 1) + 1
    nb = -(-n // b)
    pad = nb * b - n
    if pad:   # identity elements (−∞, 0, 0) at the end
        m = F.pad(m, (0, 0, 0, pad), value=_NEG_INF)
        u = F.pad(u, (0, 0, 0, pad))
        w = F.pad(w, (0, 0, 0, 0, 0, pad))
    L = m.shape[-1]
    mb, ub, wb = m.view(G, nb, b, L), u.view(G, nb, b, L), w.view(G, nb, b, L, -1)
    M = mb.amax(dim=2)                                          # block totals, all exponents ≤ 0
    f = _exp_diff(mb, M.unsqueeze(2))
    U = (ub * f).sum(dim=2)
    W = torch.einsum("gnbl,gnbld->gnld", f, wb)
    Mi, Ui, Wi = _scan_states(M, U, W)
    # state entering each block: identity for the first, the inclusive scan of the totals before it otherwise
    cm = torch.cat([torch.full_like(Mi[:, :1], _NEG_INF), Mi[:, :-1]], dim=1)
    cu = torch.cat([torch.zeros_like(Ui[:, :1]), Ui[:, :-1]], dim=1)
    cw = torch.cat([torch.zeros_like(Wi[:, :1]), Wi[:, :-1]], dim=1)
    om, ou, ow = torch.empty_like(mb), torch.empty_like(ub), torch.empty_like(wb)
    for i in range(b):
        cm, cu, cw = _combine(cm, cu, cw, mb[:, :, i], ub[:, :, i], wb[:, :, i])
        om[:, :, i], ou[:, :, i], ow[:, :, i] = cm, cu, cw
    return om.view(G, nb * b, L)[:, :n], ou.view(G, nb * b, L)[:, :n], ow.view(G, nb * b, L, -1)[:, :n]


def _chunk_states(a_c: Tensor, v_c: Tensor, m0: Tensor, u0: Tensor, w0: Tensor):
    """States entering every chunk plus the final one: ``m, u [G, n+1, L]``, ``w [G, n+1, L, Dv]``.

    Chunk summaries (max, Σe^{a−max}, Σe^{a−max}v), then the work-efficient inclusive scan
    :func:`_scan_states` with the online-softmax combine over [initial state, chunk 0, ..., chunk n−1]."""
    cm = a_c.amax(dim=2)                                        # [G, n, L]; every chunk has a real step
    e = torch.exp(a_c - cm.unsqueeze(2))                        # padded steps: e^{−∞} = 0
    m = torch.cat([m0.unsqueeze(1), cm], dim=1)
    u = torch.cat([u0.unsqueeze(1), e.sum(dim=2)], dim=1)
    w = torch.cat([w0.unsqueeze(1), torch.einsum("gncl,gncd->gnld", e, v_c)], dim=1)
    return _scan_states(m, u, w)


def _suffix_scan(mu: Tensor, Qh: Tensor, Qr: Tensor):
    """E_j = Σ_{k≥j} e^{μ_j − μ_k} Q_k (μ non-decreasing: factors ≤ 1), a Hillis–Steele scan from the end.

    ``mu [G, n+1, L]``, ``Qh [G, n+1, L, Dv]``, ``Qr [G, n+1, L]``."""
    d, n1 = 1, mu.shape[1]
    while d < n1:
        f = _exp_diff(mu[:, :-d], mu[:, d:])                    # e^{μ_i − μ_{i+d}}
        Qh = torch.cat([Qh[:, :-d] + f.unsqueeze(-1) * Qh[:, d:], Qh[:, n1 - d:]], dim=1)
        Qr = torch.cat([Qr[:, :-d] + f * Qr[:, d:], Qr[:, n1 - d:]], dim=1)
        d *= 2
    return Qh, Qr


class _Chunked:
    """The padded, chunked views of one run of the causal core and its entering states."""

    def __init__(self, a: Tensor, p: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor):
        G, T, L = a.shape
        self.G, self.T, self.L, self.Dv = G, T, L, v.shape[-1]
        self.C = C = min(CHUNK, T)
        self.n = n = -(-T // C)
        Tp = n * C
        self.a = _pad_time(a, Tp, _NEG_INF).view(G, n, C, L)
        self.p = _pad_time(p, Tp, 0.0).view(G, n, C, L)
        self.v = _pad_time(v, Tp, 0.0).view(G, n, C, self.Dv)
        self.m, self.u, self.w = _chunk_states(self.a, self.v, m0, u0, w0)
        self.upper = torch.ones(C, C, dtype=torch.bool, device=a.device).triu(1).unsqueeze(-1)
        self.blocks = _blocks(G, n, C, L)

    def pad(self, x: Tensor) -> Tensor:
        return _pad_time(x, self.n * self.C, 0.0).view(self.G, self.n, self.C, x.shape[-1])

    def block(self, gs: slice, js: slice):
        """Per block: a, p, v, entering (m, u, w), running max M [g, nb, C, L], carry e^{m_in − M}, tile W, den."""
        a, p, v = self.a[gs, js], self.p[gs, js], self.v[gs, js]
        m_in, u_in, w_in = self.m[gs, js], self.u[gs, js], self.w[gs, js]
        M = torch.maximum(torch.cummax(a, dim=2).values, m_in.unsqueeze(2))
        W = _tile(a, M, self.upper)
        carry = _exp_diff(m_in.unsqueeze(2), M)
        den = W.sum(dim=3) + carry * u_in.unsqueeze(2)
        return a, p, v, w_in, M, carry, W, den


# ------------------------------------------------------------------------------------------------ fast path

# Steps per chunk of the fast (factorised) path, and the largest logit spread inside a chunk it accepts, per
# compute dtype: e^{−spread} must stay far above the smallest normal number (fp32 1e-38, fp64 1e-308).
FAST_CHUNK = 64
FAST_SPREAD = {torch.float32: 40.0, torch.float64: 300.0}
FAST = True   # module switch (the tests turn it off to exercise the running-max tile path on ordinary inputs)


class _Fast:
    """The causal core with ONE reference max per chunk and latent instead of the running max per step, so the
    intra-chunk work is matmuls (no [C, C, L] tile of exponentials). :meth:`make` returns None when some chunk's
    logits spread too far for it (the caller then runs the exact running-max tile path).

    Per chunk j (C = FAST_CHUNK steps): entering state (m_in, u_in, w_in) from the work-efficient scan of the
    chunk summaries (max cm, Σe, Σe v with e = e^{a − cm}); r = max(m_in, cm) (no gradient), E_s = e^{a_s − r}
    ≤ 1, carry = e^{m_in − r}::

        den_t = Σ_{s≤t, s∈j} E_s + carry·u_in          c_t = p_t / den_t
        y_t   = Σ_l c_{t,l} (Σ_{s≤t, s∈j} E_{s,l} v_s + carry_l w_in,l) = (tril(c Eᵀ) v)_t + ((c·carry) w_in)_t

    (Aaren, L = 1: y = c · (cumsum(E v) + carry w_in)). Exact as the running-max form up to rounding as long as
    den_t does not underflow: den_t ≥ e^{M_t − r} with M_t the running max, so the path is taken only when
    r − max(m_in, a_first) ≤ FAST_SPREAD[dtype] in every chunk (a data-dependent check, one host sync).

    Backward (maxima fixed), per chunk: dA = tril(dy vᵀ), dv = Aᵀdy, dc = dA E + carry·(dy w_inᵀ),
    dE = dAᵀc, dw_in = (c·carry)ᵀdy, dp = dc/den, dden = −dp·c, dE += Σ_{t≥s} dden_t, du_in = carry·Σ_t dden_t,
    da = dE·E. The entering-state cotangents Q_j (and the final state's at j = n) go back through the chunk
    scan as a suffix scan E_j = Q_j + e^{μ_j − μ_{j+1}} E_{j+1} (μ = the entering maxima): E_0 is the initial
    state's cotangent and chunk k's summary gets e^{cm_k − μ_{k+1}} E_{k+1}, i.e. de_s = dΣe + v_s·dΣev,
    dv_s += e_s·dΣev, da += de·e. Memory O(T·(L + C + Dv))."""

    @classmethod
    def make(cls, a: Tensor, p: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor):
        thr = FAST_SPREAD.get(a.dtype)
        if not FAST or thr is None:
            return None
        G, T, L = a.shape
        Dv = v.shape[-1]
        C = min(FAST_CHUNK, T)
        n = -(-T // C)
        a_c = _pad_time(a, n * C, _NEG_INF).view(G, n, C, L)
        cm = a_c.amax(dim=2)                                      # [G, n, L]
        m_first = a_c[:, :, 0]
        if not bool(((cm - m_first) <= thr).all()):              # cheap pre-check before the scan
            return None
        f = cls()
        f.G, f.T, f.L, f.Dv, f.C, f.n = G, T, L, Dv, C, n
        f.a, f.cm = a_c, cm
        f.p = _pad_time(p, n * C, 0.0).view(G, n, C, L)
        f.v = _pad_time(v, n * C, 0.0).view(G, n, C, Dv)
        f.e = torch.exp(a_c - cm.unsqueeze(2))
        sw = f.e.transpose(-1, -2) @ f.v                          # chunk summaries [G, n, L, Dv]
        f.m, f.u, f.w = _scan_states(torch.cat([m0.unsqueeze(1), cm], 1), torch.cat([u0.unsqueeze(1), f.e.sum(2)], 1),
                                     torch.cat([w0.unsqueeze(1), sw], 1))
        m_in = f.m[:, :n]
        r = torch.maximum(m_in, cm)
        if not bool(((r - torch.maximum(m_in, m_first)) <= thr).all()):
            return None
        f.E = f.e * torch.exp(cm - r).unsqueeze(2)               # e^{a − r}
        f.carry = _exp_diff(m_in, r)                              # [G, n, L]
        f.den = torch.cumsum(f.E, dim=2) + (f.carry * f.u[:, :n]).unsqueeze(2)
        f.c = f.p / f.den
        return f

    def forward(self):
        G, n, C, L, Dv = self.G, self.n, self.C, self.L, self.Dv
        c, E, carry, w_in = self.c, self.E, self.carry, self.w[:, :n]
        if L == 1:
            y = c * (torch.cumsum(E * self.v, dim=2) + carry.unsqueeze(-1) * w_in)   # [G, n, 1, Dv] broadcast over C
        else:
            A = (c @ E.transpose(-1, -2)).tril_()                # A[t, s] = Σ_l c_{t,l} E_{s,l}
            y = torch.baddbmm((A @ self.v).view(G * n, C, Dv), (c * carry.unsqueeze(2)).view(G * n, C, L),
                              w_in.reshape(G * n, L, Dv))
        y = y.reshape(G, n * C, Dv)[:, :self.T]
        return y, (self.m[:, n].clone(), self.u[:, n].clone(), self.w[:, n].clone())

    def backward(self, dy: Tensor, du_T: Optional[Tensor], dw_T: Optional[Tensor]):
        G, n, C, L, Dv, T = self.G, self.n, self.C, self.L, self.Dv, self.T
        c, E, carry, v = self.c, self.E, self.carry, self.v
        w_in = self.w[:, :n]
        dy = _pad_time(dy, n * C, 0.0).view(G, n, C, Dv)
        A = (c @ E.transpose(-1, -2)).tril_()
        dA = (dy @ v.transpose(-1, -2)).tril_()
        dv = A.transpose(-1, -2) @ dy
        dc = dA @ E + (dy @ w_in.transpose(-1, -2)) * carry.unsqueeze(2)
        dE = dA.transpose(-1, -2) @ c
        cc = c * carry.unsqueeze(2)
        Qh = cc.transpose(-1, -2) @ dy                            # dw_in [G, n, L, Dv]
        dp = dc / self.den
        dden = -dp * c
        dE += dden.flip(2).cumsum(2).flip(2)                      # Σ_{t≥s} dden_t
        Qr = dden.sum(2) * carry                                  # du_in [G, n, L]
        da = dE * E
        # back through the chunk scan: suffix scan over [Q_0..Q_{n-1}, final-state cotangent]
        Qh = torch.cat([Qh, (dw_T if dw_T is not None else torch.zeros_like(w_in[:, 0])).unsqueeze(1)], 1)
        Qr = torch.cat([Qr, (du_T if du_T is not None else torch.zeros_like(Qr[:, 0])).unsqueeze(1)], 1)
        Eh, Er = _suffix_scan_linear(self.m, Qh, Qr)
        fk = _exp_diff(self.cm, self.m[:, 1:])                    # e^{cm_k − μ_{k+1}} [G, n, L]
        dsw = fk.unsqueeze(-1) * Eh[:, 1:]                        # [G, n, L, Dv]
        de = (fk * Er[:, 1:]).unsqueeze(2) + v @ dsw.transpose(-1, -2)
        e = self.e
        dv += e @ dsw
        da += de * e
        return (da.view(G, n * C, L)[:, :T], dp.view(G, n * C, L)[:, :T], dv.view(G, n * C, Dv)[:, :T],
                Er[:, 0].contiguous(), Eh[:, 0].contiguous())


def _suffix_scan_linear(mu: Tensor, Qh: Tensor, Qr: Tensor):
    """E_j = Σ_{k≥j} e^{μ_j − μ_k} Q_k (μ non-decreasing) in O(n) work: the forward state scan run on the reversed
    sequence with maxima −μ (its combine then computes exactly E_j = Q_j + e^{μ_j − μ_{j+1}} E_{j+1})."""
    neg = -mu.clamp_min(torch.finfo(mu.dtype).min)               # −(−∞) would give +∞ − +∞ = NaN: clamp first
    _, Er, Eh = _scan_states(neg.flip(1), Qr.flip(1), Qh.flip(1))
    return Eh.flip(1), Er.flip(1)


# ------------------------------------------------------------------------------------------------ causal core

# Long sequences run as consecutive segments, the state leaving one the initial state of the next, so every
# intermediate of the cores is O(segment) (no whole-sequence temporaries: on CPU each is a fresh, page-faulting
# allocation and a trip through memory; this kept the time linear in T). The maxima of the state are constants
# of the backward (see the module docstring), so chaining the segments' backwards through (du, dw) is exact.
# A segment holds LATTE_BLOCK_CHUNKS chunks of FAST_CHUNK steps, or (None) about SCAN_BLOCK_ELEMENTS numbers per
# [rows, steps, max(L, Dv, C)] tensor.
SCAN_BLOCK_ELEMENTS = 1 << 20
LATTE_BLOCK_CHUNKS: Optional[int] = None


def _segment_steps(G: int, L: int, Dv: int) -> int:
    C = FAST_CHUNK
    chunks = LATTE_BLOCK_CHUNKS or max(1, SCAN_BLOCK_ELEMENTS // (G * C * max(L, Dv, C)))
    return chunks * C


def _summary_combine(a: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor):
    """The state after the steps ``a [G, S, L]``, ``v [G, S, Dv]`` from (m0, u0, w0): the segment's
    (max, Σe^{a−max}, Σe^{a−max}v) combined with the entering state (:func:`_combine`)."""
    m = a.amax(dim=1)
    e = _exp_diff(a, m.unsqueeze(1))
    return _combine(m0, u0, w0, m, e.sum(dim=1), e.transpose(1, 2) @ v)


def causal_scan_fwd(a: Tensor, p: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor):
    """y_t = Σ_l p_{t,l} · (prefix softmax mean of v under logits a_{·,l}, started from state (m0, u0, w0)).

    ``a, p [G, T, L]``, ``v [G, T, Dv]``, ``m0, u0 [G, L]``, ``w0 [G, L, Dv]`` (T ≥ 1, one dtype).
    Returns ``y [G, T, Dv]`` and the final state ``(m [G, L], u [G, L], w [G, L, Dv])``."""
    G, T, L = a.shape
    S = _segment_steps(G, L, v.shape[-1])
    if T <= S:
        return _causal_scan_fwd_run(a, p, v, m0, u0, w0)
    y = a.new_empty((G, T, v.shape[-1]))
    state = (m0, u0, w0)
    for t0 in range(0, T, S):
        t1 = min(T, t0 + S)
        y[:, t0:t1], state = _causal_scan_fwd_run(a[:, t0:t1], p[:, t0:t1], v[:, t0:t1], *state)
    return y, state


def causal_scan_bwd(dy: Tensor, du_T: Optional[Tensor], dw_T: Optional[Tensor], a: Tensor, p: Tensor, v: Tensor,
                    m0: Tensor, u0: Tensor, w0: Tensor):
    """Backward of :func:`causal_scan_fwd` with the maxima held fixed.

    ``du_T [G, L]`` / ``dw_T [G, L, Dv]``: cotangents of the final state (None = 0).
    Returns ``(da [G, T, L], dp [G, T, L], dv [G, T, Dv], du0 [G, L], dw0 [G, L, Dv])``."""
    G, T, L = a.shape
    S = _segment_steps(G, L, v.shape[-1])
    if T <= S:
        return _causal_scan_bwd_run(dy, du_T, dw_T, a, p, v, m0, u0, w0)
    starts = list(range(0, T, S))
    entering, state = [], (m0, u0, w0)
    for t0 in starts:                         # the state entering each segment (a reduction per segment)
        entering.append(state)
        if t0 + S < T:
            state = _summary_combine(a[:, t0:t0 + S], v[:, t0:t0 + S], *state)
    da, dp, dv = torch.empty_like(a), torch.empty_like(p), torch.empty_like(v)
    for t0, st in zip(reversed(starts), reversed(entering)):
        t1 = min(T, t0 + S)
        da[:, t0:t1], dp[:, t0:t1], dv[:, t0:t1], du_T, dw_T = _causal_scan_bwd_run(
            dy[:, t0:t1], du_T, dw_T, a[:, t0:t1], p[:, t0:t1], v[:, t0:t1], *st)
    return da, dp, dv, du_T, dw_T


def _causal_scan_fwd_run(a: Tensor, p: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor):
    """y_t = Σ_l p_{t,l} · (prefix softmax mean of v under logits a_{·,l}, started from state (m0, u0, w0)).

    ``a, p [G, T, L]``, ``v [G, T, Dv]``, ``m0, u0 [G, L]``, ``w0 [G, L, Dv]`` (T ≥ 1, one dtype).
    Returns ``y [G, T, Dv]`` and the final state ``(m [G, L], u [G, L], w [G, L, Dv])``."""
    fast = _Fast.make(a, p, v, m0, u0, w0)
    if fast is not None:
        return fast.forward()
    ch = _Chunked(a, p, v, m0, u0, w0)
    y = a.new_empty((ch.G, ch.n, ch.C, ch.Dv))
    for gs, js in ch.blocks:
        _, p_b, v_b, w_in, _, carry, W, den = ch.block(gs, js)
        c = p_b / den
        A = torch.einsum("gntsl,gntl->gnts", W, c)
        y[gs, js] = A @ v_b + torch.einsum("gntl,gnld->gntd", c * carry, w_in)
    y = y.view(ch.G, ch.n * ch.C, ch.Dv)[:, :ch.T]
    n = ch.n
    return y, (ch.m[:, n].clone(), ch.u[:, n].clone(), ch.w[:, n].clone())


def _causal_scan_bwd_run(dy: Tensor, du_T: Optional[Tensor], dw_T: Optional[Tensor], a: Tensor, p: Tensor, v: Tensor,
                    m0: Tensor, u0: Tensor, w0: Tensor):
    """Backward of :func:`causal_scan_fwd` with the maxima held fixed.

    ``du_T [G, L]`` / ``dw_T [G, L, Dv]``: cotangents of the final state (None = 0).
    Returns ``(da [G, T, L], dp [G, T, L], dv [G, T, Dv], du0 [G, L], dw0 [G, L, Dv])``."""
    fast = _Fast.make(a, p, v, m0, u0, w0)
    if fast is not None:
        return fast.backward(dy, du_T, dw_T)
    ch = _Chunked(a, p, v, m0, u0, w0)
    G, n, C, L, Dv = ch.G, ch.n, ch.C, ch.L, ch.Dv
    dy_c = ch.pad(dy)
    da = a.new_empty((G, n, C, L))
    dp = a.new_empty((G, n, C, L))
    dv = a.new_empty((G, n, C, Dv))
    # E_next: the suffix sum of everything after the current block, referred to the max entering the chunk after
    # it; it starts as the final-state cotangents (dS_T, dα_T) at μ_n = m_T.
    E_h_next = dw_T.clone() if dw_T is not None else torch.zeros_like(w0)
    E_r_next = du_T.clone() if du_T is not None else torch.zeros_like(u0)
    for gs, js in reversed(ch.blocks):         # per row slice, the chunks run from the last to the first
        a_b, p_b, v_b, w_in, M, carry, W, den = ch.block(gs, js)
        dy_b = dy_c[gs, js]
        vd = dy_b @ v_b.transpose(-1, -2)                        # vd[t, s] = dy_t · v_s
        # z = dy·mean per step (mean itself is never formed), c = p/den
        z = (torch.einsum("gntsl,gnts->gntl", W, vd) + carry * torch.einsum("gnld,gntd->gntl", w_in, dy_b)) / den
        c = p_b / den
        dp[gs, js] = z
        # chunk summaries Q_j = Σ_{t∈j} e^{μ_j − M_t} (h_t, r_t) with h = c·dy, r = −c·z, then the suffix scan
        # over [chunks of this block, E_next]: E_j = Q_j + e^{μ_j − μ_{j+1}} E_{j+1}
        cc = carry * c
        Qh = torch.cat([torch.einsum("gntl,gntd->gnld", cc, dy_b), E_h_next[gs].unsqueeze(1)], dim=1)
        Qr = torch.cat([-(cc * z).sum(dim=2), E_r_next[gs].unsqueeze(1)], dim=1)
        mu = ch.m[gs, js.start:js.stop + 1]
        Eh, Er = _suffix_scan(mu, Qh, Qr)
        E_h_next[gs], E_r_next[gs] = Eh[:, 0], Er[:, 0]
        # E_{j+1}: all later time, referred to μ_{j+1} (the max at the end of chunk j)
        Bh, Br, m_out = Eh[:, 1:], Er[:, 1:], mu[:, 1:]
        Wc = W.mul_(c.unsqueeze(3))                               # c_t · e^{a_s − M_t}
        A = Wc.sum(dim=-1)
        e_out = torch.exp(a_b - m_out.unsqueeze(2))               # e^{a_s − μ_{j+1}} ≤ 1; padded steps 0
        dv[gs, js] = A.transpose(-1, -2) @ dy_b + torch.einsum("gnsl,gnld->gnsd", e_out, Bh)
        # Σ_t c_t W[t,s] (dy_t·v_s − z_t): elementwise then a reduction over t (no permuted copy of the tile)
        da[gs, js] = (Wc.mul_(vd.unsqueeze(-1) - z.unsqueeze(3)).sum(dim=2)
                      + e_out * (torch.einsum("gnld,gnsd->gnsl", Bh, v_b) + Br.unsqueeze(2)))
    T = ch.T
    return (da.view(G, n * C, L)[:, :T], dp.view(G, n * C, L)[:, :T], dv.view(G, n * C, Dv)[:, :T],
            E_r_next, E_h_next)


# ------------------------------------------------------------------------------------------------ bidirectional

def _bidir_fwd(a: Tensor, p: Tensor, v: Tensor):
    """Per-latent softmax over all of time: returns y ``[G, T, Dv]``, π ``[G, T, L]``, mean ``[G, L, Dv]``."""
    e = torch.exp(a - a.amax(dim=1, keepdim=True))
    pi = e / e.sum(dim=1, keepdim=True)
    mean = torch.einsum("gtl,gtd->gld", pi, v)
    return torch.einsum("gtl,gld->gtd", p, mean), pi, mean


def _bidir_bwd(dy: Tensor, a: Tensor, p: Tensor, v: Tensor):
    """Returns (da, dp, dv) of :func:`_bidir_fwd` (see the module docstring)."""
    _, pi, mean = _bidir_fwd(a, p, v)
    Gm = torch.einsum("gtl,gtd->gld", p, dy)                    # cotangent of mean
    dp = torch.einsum("gtd,gld->gtl", dy, mean)
    dv = torch.einsum("gsl,gld->gsd", pi, Gm)
    da = pi * (torch.einsum("gsd,gld->gsl", v, Gm) - (mean * Gm).sum(-1).unsqueeze(1))
    return da, dp, dv


# ------------------------------------------------------------------------------------------------ drivers

def _initial(m0, u0, w0, N, H, L, Dv, cd, device):
    """Initial state as compute-dtype ``[N, H, L]``, ``[N, H, L]``, ``[N, H, L, Dv]`` (empty state if None)."""
    if m0 is None:
        return (torch.full((N, H, L), _NEG_INF, dtype=cd, device=device),
                torch.zeros((N, H, L), dtype=cd, device=device), torch.zeros((N, H, L, Dv), dtype=cd, device=device))
    return m0.to(cd).reshape(N, H, L), u0.to(cd).reshape(N, H, L), w0.to(cd).reshape(N, H, L, Dv)


def _causal_forward(a, p, v, m0, u0, w0, cu_seqlens, out_dtype):
    """Run the core per segment. ``a, p [B, H, T, L]``, ``v [B, H, T, Dv]``, states ``[N, H, L(, Dv)]``.

    Returns o ``[B, T, H, Dv]`` (out_dtype), final states ``[N, H, L]``, ``[N, H, L]``, ``[N, H, L, Dv]``."""
    B, H, T, L = a.shape
    Dv = v.shape[-1]
    N = m0.shape[0]
    sd = state_dtype(out_dtype)
    o = new_empty((B, T, H, Dv), dtype=out_dtype, device=a.device)
    mT = new_empty((N, H, L), dtype=sd, device=a.device)
    uT = new_empty((N, H, L), dtype=sd, device=a.device)
    wT = new_empty((N, H, L, Dv), dtype=sd, device=a.device)
    for bs, ts, ss in _segments(B, T, cu_seqlens):
        b, Tn = bs.stop - bs.start, ts.stop - ts.start
        if Tn == 0:
            mT[ss], uT[ss], wT[ss] = m0[ss], u0[ss], w0[ss]
            continue
        y, (m, u, w) = causal_scan_fwd(
            a[bs, :, ts].reshape(b * H, Tn, L), p[bs, :, ts].reshape(b * H, Tn, L), v[bs, :, ts].reshape(b * H, Tn, Dv),
            m0[ss].reshape(b * H, L), u0[ss].reshape(b * H, L), w0[ss].reshape(b * H, L, Dv))
        o[bs, ts] = y.view(b, H, Tn, Dv).transpose(1, 2)
        mT[ss], uT[ss] = m.view(b, H, L), u.view(b, H, L)
        wT[ss] = w.view(b, H, L, Dv)
    return o, mT, uT, wT


def _causal_backward(do, du_T, dw_T, a, p, v, m0, u0, w0, cu_seqlens):
    """Per-segment backward. ``do [B, T, H, Dv]``; rest as :func:`_causal_forward` (compute dtype).

    Returns da, dp ``[B, H, T, L]``, dv ``[B, H, T, Dv]``, du0 ``[N, H, L]``, dw0 ``[N, H, L, Dv]``."""
    B, H, T, L = a.shape
    Dv = v.shape[-1]
    N = m0.shape[0]
    cd, dev = a.dtype, a.device
    dy = _heads_major(do, cd)
    if du_T is not None:
        du_T = du_T.to(cd).reshape(N, H, L)
    if dw_T is not None:
        dw_T = dw_T.to(cd).reshape(N, H, L, Dv)
    da = new_empty((B, H, T, L), dtype=cd, device=dev)
    dp = new_empty((B, H, T, L), dtype=cd, device=dev)
    dv = new_empty((B, H, T, Dv), dtype=cd, device=dev)
    du0 = new_empty((N, H, L), dtype=cd, device=dev)
    dw0 = new_empty((N, H, L, Dv), dtype=cd, device=dev)
    for bs, ts, ss in _segments(B, T, cu_seqlens):
        b, Tn = bs.stop - bs.start, ts.stop - ts.start
        if Tn == 0:   # final state == initial state
            du0[ss] = du_T[ss] if du_T is not None else 0.0
            dw0[ss] = dw_T[ss] if dw_T is not None else 0.0
            continue
        g = b * H
        res = causal_scan_bwd(
            dy[bs, :, ts].reshape(g, Tn, Dv),
            du_T[ss].reshape(g, L) if du_T is not None else None,
            dw_T[ss].reshape(g, L, Dv) if dw_T is not None else None,
            a[bs, :, ts].reshape(g, Tn, L), p[bs, :, ts].reshape(g, Tn, L), v[bs, :, ts].reshape(g, Tn, Dv),
            m0[ss].reshape(g, L), u0[ss].reshape(g, L), w0[ss].reshape(g, L, Dv))
        da[bs, :, ts] = res[0].view(b, H, Tn, L)
        dp[bs, :, ts] = res[1].view(b, H, Tn, L)
        dv[bs, :, ts] = res[2].view(b, H, Tn, Dv)
        du0[ss] = res[3].view(b, H, L)
        dw0[ss] = res[4].view(b, H, L, Dv)
    return da, dp, dv, du0, dw0


# ------------------------------------------------------------------------------------------------ Aaren

def _aaren_logits(q: Tensor, k: Tensor, scale: float, cd: torch.dtype):
    """q as ``[B, H, D]`` and a = scale·(q·k_t) as ``[B, H, T, 1]`` (compute dtype)."""
    B, T, H, D = k.shape
    qb = q.to(cd)
    qb = qb.unsqueeze(0).expand(B, H, D) if qb.dim() == 2 else qb
    kh = _heads_major(k, cd)                                     # [B, H, T, D]
    return qb, kh, (scale * (kh @ qb.unsqueeze(-1)))


# Steps per chunk of the within-chunk prefix sums of the Aaren path (a [C, C] triangular ones matrix times the
# chunk's [C, H·Dv] values: 2·C flops per number, far cheaper on CPU than ``cumsum`` along time of a
# [B, T, H, Dv] tensor), and the numbers per block of steps (time-major [B, steps, H, Dv] working set).
AAREN_CHUNK = 16
AAREN_BLOCK_ELEMENTS = 1 << 18


_TRIANGLES: dict = {}


def _triangle(C: int, dtype: torch.dtype, device: torch.device, upper: bool) -> Tensor:
    """The [C, C] lower (``upper``: upper) triangular ones matrix, made once per (C, dtype, device) and shared
    (read only: it is only ever a matmul operand)."""
    key = (C, dtype, device, upper)
    tri = _TRIANGLES.get(key)
    if tri is None:
        tri = torch.ones(C, C, dtype=dtype, device=device)
        tri = tri.triu_() if upper else tri.tril_()
        if len(_TRIANGLES) < 64:
            _TRIANGLES[key] = tri
    return tri


def _block_scan(X: Tensor, carry: Optional[Tensor], tri: Tensor, reverse: bool, out: Optional[Tensor] = None):
    """Prefix sums along time of ``X [B, L, F]`` started from ``carry [B, F]`` (None: zero): inclusive Σ_{i≤t}
    (or, with ``reverse``, the suffix Σ_{i≥t}, ``tri`` then upper triangular). Within chunks of C = ``tri``'s size
    steps a matmul by the triangular ones matrix, across chunks a cumsum of the chunk totals. Returns (sums
    ``[B, L, F]``, the carry for the next block: the total including ``carry``). ``out``: a contiguous
    ``[B, L, F]`` buffer of X's dtype to write the sums into (only when C divides L)."""
    B, L, Fd = X.shape
    C = tri.shape[0]
    n = -(-L // C)
    if n * C != L:
        X = F.pad(X, (0, 0, 0, n * C - L))
    if out is not None:
        Y = torch.matmul(tri, X.view(B, n, C, Fd), out=out.view(B, n, C, Fd))
    else:
        Y = torch.matmul(tri, X.view(B, n, C, Fd))                           # within-chunk sums [B, n, C, F]
    # incl[:, j] = carry + Σ of the chunk totals up to and including chunk j (from chunk j on, when reversed);
    # chunk j then gets incl of its predecessor added (the carry alone for the first chunk)
    if not reverse:
        incl = Y[:, :, -1].contiguous().cumsum(1)     # a cumsum of the strided view is ~1.6x slower on CPU
    else:
        incl = Y[:, :, 0].flip(1).cumsum(1).flip(1)
    if carry is not None:
        incl += carry.unsqueeze(1)
    if n > 1:
        if not reverse:
            Y[:, 1:] += incl[:, :-1].unsqueeze(2)
        else:
            Y[:, :-1] += incl[:, 1:].unsqueeze(2)
    if carry is not None:
        if not reverse:
            Y[:, :1] += carry.view(B, 1, 1, Fd)
        else:
            Y[:, -1:] += carry.view(B, 1, 1, Fd)
    return Y.view(B, n * C, Fd)[:, :L], incl[:, 0 if reverse else -1]


class _AarenGlobal:
    """Aaren with ONE reference max per sequence, in the time-major layout of the inputs: with s_t = scale·q·k_t,
    r = max(m0, max_t s_t), E_t = e^{s_t − r}, κ = e^{m0 − r}::

        N_t = Σ_{i≤t} E_i v_i + κ w0,   D_t = Σ_{i≤t} E_i + κ u0,   o_t = N_t / D_t,   final state (r, D_T, N_T)

    (the cost of the textbook parallel form, exact where it underflows: taken only when D_t cannot underflow, i.e.
    r − max(m0, s_0) ≤ FAST_SPREAD[dtype]; otherwise None and the chunked path). The [B, T, H, Dv] prefix sums run
    block by block (:func:`_block_scan`, carrying the running sum), so no whole-sequence [B, T, H, Dv] temporary
    exists besides the output. Backward (r fixed): g_t = dN_t = dy_t / D_t, h_t = dD_t = −(g_t·N_t)/D_t (plus dw_T, du_T
    at the last step: the initial carries of the suffix sums), Ĝ, Ĥ = suffix sums of g, h; dv_s = E_s Ĝ_s,
    ds_s = E_s (v_s·Ĝ_s + Ĥ_s), dw0 = κ Ĝ_0, du0 = κ Ĥ_0. It runs over the blocks from the last to the first,
    h_t = −dy_t·o_t/D_t from the saved output o (N is not recomputed)."""

    @classmethod
    def make(cls, q, k, v, m0, u0, w0, scale):
        cd = _compute_dtype(k.dtype)
        thr = FAST_SPREAD.get(cd)
        if not FAST or thr is None:
            return None
        f = cls()
        f.cd = cd
        B, T, H, D = k.shape
        Dv = v.shape[-1]
        f.qb = (q.to(cd) if q.dim() == 3 else q.to(cd).unsqueeze(0)).expand(B, H, D)      # [B, H, D]
        C = min(AAREN_CHUNK, T)
        f.block = C * max(1, AAREN_BLOCK_ELEMENTS // (B * H * max(D, Dv) * C))
        # s_t = scale·q·k_t for all heads as one einsum of the time-major k [B, T, H, D] with scale·q [B, H, D]
        # (block by block: no [B, T, H, D] temporary). Measured 3-5x faster on CPU than a matmul by the
        # block-diagonal [H·D, H] matrix of q (a skinny N = H GEMM: ~0.34 ms of a 1.2 ms call at T=1k H4 D64)
        q_scaled = f.qb * scale
        if T <= f.block:
            s = torch.einsum("bthd,bhd->bth", k.to(cd), q_scaled).contiguous()   # einsum may return [B, H, T] strides
        else:
            s = new_empty((B, T, H), dtype=cd, device=k.device)
            for a in range(0, T, f.block):
                b = min(T, a + f.block)
                s[:, a:b] = torch.einsum("bthd,bhd->bth", k[:, a:b].to(cd), q_scaled)
        r = s.amax(dim=1)
        first = s[:, 0]
        if m0 is not None:
            m0c = m0.to(cd)
            r = torch.maximum(r, m0c)
            first = torch.maximum(first, m0c)
        if not bool(((r - first) <= thr).all()):
            return None
        f.r = r
        f.E = s.sub_(r.unsqueeze(1)).exp_()                                   # [B, T, H]
        f.kappa = _exp_diff(m0.to(cd), r) if m0 is not None else None
        f.D = torch.cumsum(f.E, dim=1)                                         # [B, T, H]
        f.N0 = None                                                            # zero without a state
        if f.kappa is not None:
            f.D += (f.kappa * u0.to(cd)).unsqueeze(1)
            f.N0 = f.kappa.unsqueeze(-1) * w0.to(cd)
        f.C = C
        return f

    def _weighted_values(self, v: Tensor, a: int, b: int) -> Tensor:
        """E_t v_t for the steps [a, b) as ``[B, b − a, H·Dv]`` (compute dtype)."""
        B, _, H, Dv = v.shape
        return (self.E[:, a:b].unsqueeze(-1) * v[:, a:b]).to(self.cd).reshape(B, b - a, H * Dv)

    def forward(self, v, out_dtype):
        B, T, H, Dv = v.shape
        o = new_empty((B, T, H, Dv), dtype=out_dtype, device=v.device)
        carry = self.N0.reshape(B, H * Dv) if self.N0 is not None else None
        tri = _triangle(self.C, self.cd, v.device, upper=False)
        for a in range(0, T, self.block):
            b = min(T, a + self.block)
            ob = o[:, a:b]
            if o.dtype == self.cd and (b - a) % self.C == 0 and ob.is_contiguous():
                # the sums straight into the output block, divided there (no [B, block, H·Dv] temporary)
                _, carry = _block_scan(self._weighted_values(v, a, b), carry, tri, reverse=False,
                                       out=ob.view(B, b - a, H * Dv))
                ob.div_(self.D[:, a:b].unsqueeze(-1))
                continue
            N, carry = _block_scan(self._weighted_values(v, a, b), carry, tri, reverse=False)
            if o.dtype == self.cd and o.is_contiguous():
                torch.div(N.view(B, b - a, H, Dv), self.D[:, a:b].unsqueeze(-1), out=o[:, a:b])
            else:
                o[:, a:b] = N.view(B, b - a, H, Dv) / self.D[:, a:b].unsqueeze(-1)
        sd = state_dtype(out_dtype)
        return o, self.r.to(sd), self.D[:, -1].to(sd, copy=True), carry.view(B, H, Dv).to(sd, copy=True)

    def backward(self, do, du_T, dw_T, o, v, k, q, scale):
        B, T, H, Dv = v.shape
        D = k.shape[-1]
        cd = self.cd
        # from the last block to the first, carrying the suffix sums Ĝ and Ĥ of everything after
        cG = dw_T.to(cd).reshape(B, H * Dv) if dw_T is not None else None                # None: zero
        cH = du_T.to(cd) if du_T is not None else k.new_zeros((B, H), dtype=cd)
        triu = _triangle(self.C, cd, k.device, upper=True)
        dk = new_empty((B, T, H, D), dtype=k.dtype, device=k.device)
        dv = new_empty((B, T, H, Dv), dtype=v.dtype, device=v.device)
        dq = k.new_zeros((B, H, D), dtype=cd)
        for a in reversed(range(0, T, self.block)):
            b = min(T, a + self.block)
            L = b - a
            Eb, Db = self.E[:, a:b], self.D[:, a:b]
            dy = do[:, a:b].to(cd)
            h = (dy * o[:, a:b]).sum(-1).div_(Db).neg_()                          # dD_t = −dy·o/D
            Hs = h.flip(1).cumsum(1).flip(1).add_(cH.unsqueeze(1))                 # Ĥ [B, L, H]
            g = (dy / Db.unsqueeze(-1)).reshape(B, L, H * Dv)                         # dN_t = dy/D
            G, cG = _block_scan(g, cG, triu, reverse=True)                         # Ĝ [B, L, H·Dv]
            cH = Hs[:, 0]
            G = G.view(B, L, H, Dv)
            dv[:, a:b] = Eb.unsqueeze(-1) * G
            ds = (v[:, a:b] * G).sum(-1).add_(Hs).mul_(Eb).mul_(scale)           # d(scale·q·k_t) [B, L, H]
            dq += torch.einsum("blh,blhd->bhd", ds, k[:, a:b].to(cd))
            dk[:, a:b] = ds.unsqueeze(-1) * self.qb.unsqueeze(1)
        if q.dim() == 2:
            dq = dq.sum(0)
        du0 = dw0 = None
        if self.kappa is not None:
            du0 = self.kappa * cH
            dw0 = self.kappa.unsqueeze(-1) * cG.view(B, H, Dv)
        return dq.to(q.dtype), dk, dv, du0, dw0


def aaren_attention_fwd(q, k, v, m0, u0, w0, cu_seqlens, scale):
    B, T, H, D = k.shape
    if T == 1 and cu_seqlens is None:                           # the decoding step
        o, (m, u, w) = aaren_step(q, k[:, 0], v[:, 0], None if m0 is None else (m0, u0, w0), scale=scale)
        return o.unsqueeze(1), m, u, w
    if cu_seqlens is None:
        fast = _AarenGlobal.make(q, k, v, m0, u0, w0, scale)
        if fast is not None:
            return fast.forward(v, k.dtype)
    Dv = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    cd = _compute_dtype(k.dtype)
    _, _, a = _aaren_logits(q, k, scale, cd)
    p = torch.ones_like(a)
    s0 = _initial(m0, u0, w0, N, H, 1, Dv, cd, k.device)
    o, mT, uT, wT = _causal_forward(a, p, _heads_major(v, cd), *s0, cu_seqlens, k.dtype)
    return o, mT.view(N, H), uT.view(N, H), wT.view(N, H, Dv)


def aaren_attention_bwd(do, du_T, dw_T, q, k, v, o, m0, u0, w0, cu_seqlens, scale):
    B, T, H, D = k.shape
    if cu_seqlens is None:
        fast = _AarenGlobal.make(q, k, v, m0, u0, w0, scale)
        if fast is not None:
            dq, dk, dv, du0, dw0 = fast.backward(do, du_T, dw_T, o, v, k, q, scale)
            if du0 is not None:
                du0, dw0 = du0.to(u0.dtype), dw0.to(w0.dtype)
            return dq, dk, dv, du0, dw0
    Dv = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    cd = _compute_dtype(k.dtype)
    qb, kh, a = _aaren_logits(q, k, scale, cd)
    p = torch.ones_like(a)
    s0 = _initial(m0, u0, w0, N, H, 1, Dv, cd, k.device)
    da, _, dv, du0, dw0 = _causal_backward(do, du_T, dw_T, a, p, _heads_major(v, cd), *s0, cu_seqlens)
    # a_t = scale·(q·k_t): dq = scale·Σ_t da_t k_t, dk_t = scale·da_t q
    dq = scale * (da.transpose(-1, -2) @ kh).squeeze(-2)         # [B, H, D]
    if q.dim() == 2:
        dq = dq.sum(dim=0)
    dk = scale * da * qb.unsqueeze(2)                           # [B, H, T, D]
    if m0 is None:
        du0 = dw0 = None
    else:
        du0, dw0 = du0.view(N, H).to(u0.dtype), dw0.view(N, H, Dv).to(w0.dtype)
    return dq.to(q.dtype), _time_major(dk, k.dtype), _time_major(dv, v.dtype), du0, dw0


# ------------------------------------------------------------------------------------------------ Latte


def _latte_block(x: Tensor, bs: slice, t0: int, t1: int, cd: torch.dtype) -> Tensor:
    """``x[bs, t0:t1]`` (``[b, ·, H, X]``) as a contiguous heads-major ``[b·H, t1 − t0, X]`` in ``cd``."""
    b, H = bs.stop - bs.start, x.shape[2]
    return _heads_major(x[bs, t0:t1], cd).reshape(b * H, t1 - t0, x.shape[-1])


def _latte_causal_forward(q, k, v, m0, u0, w0, cu_seqlens):
    """Causal Latte from the time-major inputs, block by block over time (the state carried across blocks):
    only O(block) heads-major copies exist. Returns o ``[B, T, H, Dv]`` and the final states (state dtype)."""
    B, T, H, L = q.shape
    Dv = v.shape[-1]
    N = m0.shape[0]
    cd = m0.dtype
    sd = state_dtype(q.dtype)
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
    mT = new_empty((N, H, L), dtype=sd, device=q.device)
    uT = new_empty((N, H, L), dtype=sd, device=q.device)
    wT = new_empty((N, H, L, Dv), dtype=sd, device=q.device)
    for bs, ts, ss in _segments(B, T, cu_seqlens):
        b = bs.stop - bs.start
        S = _segment_steps(b * H, L, Dv)
        state = (m0[ss].reshape(b * H, L), u0[ss].reshape(b * H, L), w0[ss].reshape(b * H, L, Dv))
        for t0 in range(ts.start, ts.stop, S):
            t1 = min(ts.stop, t0 + S)
            p = torch.softmax(_latte_block(q, bs, t0, t1, cd), dim=-1)
            y, state = _causal_scan_fwd_run(_latte_block(k, bs, t0, t1, cd), p, _latte_block(v, bs, t0, t1, cd),
                                            *state)
            o[bs, t0:t1] = y.view(b, H, t1 - t0, Dv).transpose(1, 2)
        mT[ss], uT[ss], wT[ss] = state[0].view(b, H, L), state[1].view(b, H, L), state[2].view(b, H, L, Dv)
    return o, mT, uT, wT


def _latte_causal_backward(do, da_T, dS_T, q, k, v, m0, u0, w0, cu_seqlens):
    """Backward of :func:`_latte_causal_forward`: a forward pass of per-block state summaries, then the blocks
    from the last to the first, each writing its dq, dk, dv. Returns (dq, dk, dv, du0, dw0) (compute dtype for
    the state cotangents)."""
    B, T, H, L = q.shape
    Dv = v.shape[-1]
    N = m0.shape[0]
    cd = m0.dtype
    dq = new_empty((B, T, H, L), dtype=q.dtype, device=q.device)
    dk = new_empty((B, T, H, L), dtype=k.dtype, device=q.device)
    dv = new_empty((B, T, H, Dv), dtype=v.dtype, device=q.device)
    du0 = new_empty((N, H, L), dtype=cd, device=q.device)
    dw0 = new_empty((N, H, L, Dv), dtype=cd, device=q.device)
    for bs, ts, ss in _segments(B, T, cu_seqlens):
        b = bs.stop - bs.start
        g = b * H
        S = _segment_steps(g, L, Dv)
        du = da_T[ss].to(cd).reshape(g, L) if da_T is not None else None
        dw = dS_T[ss].to(cd).reshape(g, L, Dv) if dS_T is not None else None
        starts = list(range(ts.start, ts.stop, S))
        entering, state = [], (m0[ss].reshape(g, L), u0[ss].reshape(g, L), w0[ss].reshape(g, L, Dv))
        for t0 in starts:
            entering.append(state)
            t1 = min(ts.stop, t0 + S)
            if t1 < ts.stop:
                state = _summary_combine(_latte_block(k, bs, t0, t1, cd), _latte_block(v, bs, t0, t1, cd), *state)
        for t0, st in zip(reversed(starts), reversed(entering)):
            t1 = min(ts.stop, t0 + S)
            p = torch.softmax(_latte_block(q, bs, t0, t1, cd), dim=-1)
            da, dp, dvb, du, dw = _causal_scan_bwd_run(
                _latte_block(do, bs, t0, t1, cd), du, dw, _latte_block(k, bs, t0, t1, cd), p,
                _latte_block(v, bs, t0, t1, cd), *st)
            shape = (b, H, t1 - t0, -1)
            dk[bs, t0:t1] = da.view(shape).transpose(1, 2)
            dv[bs, t0:t1] = dvb.view(shape).transpose(1, 2)
            dq[bs, t0:t1] = _softmax_backward(p, dp).view(shape).transpose(1, 2)
        if du is None:   # zero-length sequence without a final-state cotangent: the final state is the initial one
            du = torch.zeros((g, L), dtype=cd, device=q.device)
        if dw is None:
            dw = torch.zeros((g, L, Dv), dtype=cd, device=q.device)
        du0[ss], dw0[ss] = du.view(b, H, L), dw.view(b, H, L, Dv)
    return dq, dk, dv, du0, dw0


def _softmax_backward(p: Tensor, dp: Tensor) -> Tensor:
    """p = softmax_l(q): dq = p ⊙ (dp − Σ_l p dp). dp is first shifted by dp_{·,0} (the result is unchanged as
    Σ_l p = 1): a common part of dp then cancels exactly instead of leaving rounding noise (e.g. T = 1)."""
    dp = dp - dp[..., :1]
    return p * (dp - (p * dp).sum(dim=-1, keepdim=True))


def latte_attention_fwd(q, k, v, m0, a0, S0, cu_seqlens, causal):
    B, T, H, L = q.shape
    if T == 1 and causal and cu_seqlens is None:                # the decoding step
        o, (m, a, S) = latte_step(q[:, 0], k[:, 0], v[:, 0], None if m0 is None else (m0, a0, S0))
        return o.unsqueeze(1), m, a, S
    Dv = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    cd = _compute_dtype(q.dtype)
    if causal:
        s0 = _initial(m0, a0, S0, N, H, L, Dv, cd, q.device)
        return _latte_causal_forward(q, k, v, *s0, cu_seqlens)
    p = torch.softmax(_heads_major(q, cd), dim=-1)
    kh, vh = _heads_major(k, cd), _heads_major(v, cd)
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
    for bs, ts, _ in _segments(B, T, cu_seqlens):
        b, Tn = bs.stop - bs.start, ts.stop - ts.start
        if Tn == 0:
            continue
        y, _, _ = _bidir_fwd(kh[bs, :, ts].reshape(b * H, Tn, L), p[bs, :, ts].reshape(b * H, Tn, L),
                             vh[bs, :, ts].reshape(b * H, Tn, Dv))
        o[bs, ts] = y.view(b, H, Tn, Dv).transpose(1, 2)
    return o, None, None, None


def latte_attention_bwd(do, da_T, dS_T, q, k, v, o, m0, a0, S0, cu_seqlens, causal):
    B, T, H, L = q.shape
    Dv = v.shape[-1]
    N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    cd = _compute_dtype(q.dtype)
    if causal:
        s0 = _initial(m0, a0, S0, N, H, L, Dv, cd, q.device)
        dq, dk, dv, da0, dS0 = _latte_causal_backward(do, da_T, dS_T, q, k, v, *s0, cu_seqlens)
        if m0 is None:
            return dq, dk, dv, None, None
        return dq, dk, dv, da0.to(a0.dtype), dS0.to(S0.dtype)
    p = torch.softmax(_heads_major(q, cd), dim=-1)
    kh, vh = _heads_major(k, cd), _heads_major(v, cd)
    dy = _heads_major(do, cd)
    dk = new_empty((B, H, T, L), dtype=cd, device=q.device)
    dp = new_empty((B, H, T, L), dtype=cd, device=q.device)
    dv = new_empty((B, H, T, Dv), dtype=cd, device=q.device)
    for bs, ts, _ in _segments(B, T, cu_seqlens):
        b, Tn = bs.stop - bs.start, ts.stop - ts.start
        if Tn == 0:
            continue
        g = b * H
        dk_s, dp_s, dv_s = _bidir_bwd(dy[bs, :, ts].reshape(g, Tn, Dv), kh[bs, :, ts].reshape(g, Tn, L),
                                      p[bs, :, ts].reshape(g, Tn, L), vh[bs, :, ts].reshape(g, Tn, Dv))
        dk[bs, :, ts] = dk_s.view(b, H, Tn, L)
        dp[bs, :, ts] = dp_s.view(b, H, Tn, L)
        dv[bs, :, ts] = dv_s.view(b, H, Tn, Dv)
    dq = _softmax_backward(p, dp)
    return _time_major(dq, q.dtype), _time_major(dk, k.dtype), _time_major(dv, v.dtype), None, None
