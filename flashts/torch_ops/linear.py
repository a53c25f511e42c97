"""Linear attention (SPEC §1) for the ``torch`` backend: chunkwise, O(T) memory, explicit backward.

Math. With q̃_t = scale·φ(q_t), k̃_t = φ(k_t) (φ = elu+1, relu or identity)::

    S_t = S_0 + Σ_{s∈A(t)} k̃_s v_sᵀ   [D, Dv]        z_t = z_0 + Σ_{s∈A(t)} k̃_s   [D]
    o_t = q̃_tᵀ S_t / (q̃_t·z_t + eps)   (normalize)    o_t = q̃_tᵀ S_t   (otherwise)

The normaliser is folded into the values: v' = [v | 1] (E = Dv + 1 columns) gives S' = [S | z] and
q̃_tᵀ S'_t = [num_t | den_t], so the normalised and un-normalised cases share one core on (q̃, k̃, v').

Chunking (causal). Time is cut into chunks of C = min(CHUNK_SIZE, T) steps (the last one zero-padded; zero
rows of k̃ and v' add nothing to a state, zero rows of q̃ give discarded outputs). For chunk c with
S_{c-1} the state entering it::

    O_c = Q_c S_{c-1} + tril(Q_c K_cᵀ) V_c          S_c = S_{c-1} + K_cᵀ V_c

Chunks are processed in blocks of several chunks at a time (a Python loop over blocks, everything inside a
block batched): the states entering the chunks of a block are the carried state plus an exclusive prefix sum
of the K_cᵀ V_c over the block (a matmul by a strictly triangular ones matrix). A block holds at most
~BLOCK_ELEMENTS numbers of intermediates, so memory is O(T·(D + Dv)) for inputs and outputs plus a constant;
no T×T tensor exists, only C×C per chunk.

CPU layout (causal path). The inputs stay ``[B, T, H, ·]``: each block's steps are copied into small
heads-first buffers (the feature map applied in place, padding rows zero) and its results written straight
into the time-major outputs, so no whole-sequence temporary exists (a fresh ≥ 32 MB CPU allocation page-faults
on every call, besides the memory traffic). S and z = [S | z]'s columns are carried apart inside (Dv-wide
matmuls: an odd Dv + 1 width costs ~20 % in the CPU BLAS); den = q̃·z_before + Σ_s tril(Q Kᵀ)_{·s}.

Non-causal: S' = S'_0 + Σ_s k̃_s v'_sᵀ over the whole sequence, O = Q S' (no chunking needed).

Backward (by hand; autograd is off inside the custom op). With do the output cotangent:

* normalisation: o = num/(den+eps) gives dnum = do/(den+eps), dden = −(do·o)/(den+eps); without
  normalisation dnum = do, dden = 0. dO' = [dnum | dden] is the cotangent of q̃ᵀS'. den is recomputed (one
  column of the forward), o is the saved output (in the input dtype, as a GPU kernel would keep it).
* chunked core, carrying dS (the cotangent of the state leaving the current block, initially the cotangent of
  the final state, [dS_T | dz_T]) from the last block to the first. For chunk c, with dS_c = cotangent of the
  state leaving chunk c (= carried dS + Σ_{c'>c} Q_{c'}ᵀ dO'_{c'}, a reverse exclusive cumsum)::

      dQ_c = dO'_c S_{c-1}ᵀ + tril(dO'_c V'_cᵀ) K_c
      dK_c = V'_c dS_cᵀ    + tril(dO'_c V'_cᵀ)ᵀ Q_c
      dV'_c = K_c dS_c     + tril(Q_c K_cᵀ)ᵀ dO'_c
      dS_{c-1} = dS_c + Q_cᵀ dO'_c

  The states entering each block are recomputed by a cheap forward pass (K_bᵀ V'_b per block), the chunk
  states inside a block as in the forward; the cotangent left at the start is [dS_0 | dz_0]. With dO', S' and
  V' split into their Dv and last columns, the products above are evaluated as Dv-wide matmuls plus rank-one
  terms (see :func:`_causal_backward_blocked`).
* feature map and scale: dq = scale·φ'(q)·dq̃, dk = φ'(k)·dk̃ with φ' = 1 if x > 0 else eˣ (elu+1; the
  exponent is clamped to ≤ 0 before exp), [x > 0] (relu), 1 (identity); dv = the first Dv columns of dV'.
* GQA: k, v are expanded to the H query heads (head h reads kv head h // (H // Hk)) and dk, dv are summed
  back over each group.

Packed sequences (``cu_seqlens``): a Python loop over the sequences, each run as its own batch of one with
its own initial/final state row. Computation is in float64 for float64 inputs, float32 otherwise; states are
float32 (float64); outputs and gradients are returned in the dtypes of the corresponding inputs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops._common import new_empty, state_dtype
from .step import linear_step

# Steps per chunk (the tril(Q Kᵀ) blocks are CHUNK_SIZE × CHUNK_SIZE).
CHUNK_SIZE = 64
# Rough number of intermediate elements one block of chunks may hold (bounds the memory of a block).
BLOCK_ELEMENTS = 1 << 22


# --------------------------------------------------------------------------- small helpers


def _feature_map(x: Tensor, feature_map: str) -> Tensor:
    if feature_map == "elu":  # elu(x)+1 written as e^{min(x,0)} + max(x,0): no cancellation of (eˣ − 1) + 1
        return torch.exp(x.clamp(max=0)) + x.clamp(min=0)   # out of place: autograd-safe (the nn step)
    if feature_map == "relu":
        return F.relu(x)
    return x


def _feature_map_grad(x: Tensor, feature_map: str) -> Optional[Tensor]:
    """φ'(x), or None for the identity (derivative 1)."""
    if feature_map == "elu":  # elu(x)+1 = x+1 for x > 0, eˣ otherwise; exp only of values ≤ 0
        return torch.where(x > 0, torch.ones_like(x), torch.exp(x.clamp(max=0)))
    if feature_map == "relu":
        return (x > 0).to(x.dtype)
    return None


def _heads_first(x: Tensor, group: int, dtype: torch.dtype) -> Tensor:
    """``[B, T, Hx, F]`` -> ``[B, Hx·group, T, F]`` in ``dtype``, each head repeated ``group`` times (GQA)."""
    x = x.transpose(1, 2).to(dtype)
    if group > 1:
        x = x.repeat_interleave(group, dim=1)
    return x.contiguous()


def _time_first(x: Tensor, kv_heads: int, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`_heads_first`: ``[B, H, T, F]`` -> new ``[B, T, kv_heads, F]`` in ``dtype``,
    summing each group of H // kv_heads consecutive heads."""
    B, H, T, Fd = x.shape
    if H != kv_heads:
        x = x.reshape(B, kv_heads, H // kv_heads, T, Fd).sum(2)
    out = new_empty((B, T, kv_heads, Fd), dtype=dtype, device=x.device)
    out.copy_(x.transpose(1, 2))
    return out


def _augment_values(v: Tensor) -> Tensor:
    """v' = [v | 1]: the extra column turns S into [S | z] and q̃ᵀS' into [num | den]."""
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)


def _augment_state(S: Optional[Tensor], z: Optional[Tensor], D: int, Dv: int, like: Tensor) -> Optional[Tensor]:
    """[S | z] as ``[N, H, D, Dv + 1]`` in ``like.dtype`` (a missing part is zero; both missing -> None)."""
    if S is None and z is None:
        return None
    N, H = (S if S is not None else z).shape[:2]
    out = like.new_zeros((N, H, D, Dv + 1))
    if S is not None:
        out[..., :Dv] = S
    if z is not None:
        out[..., Dv] = z
    return out


def _segments(B: int, T: int, cu_seqlens: Optional[Tensor]):
    """(t0, t1, n0, n1): time range and state rows of each independent run (all of the batch, or each
    packed sequence as a batch of one)."""
    if cu_seqlens is None:
        return [(0, T, 0, B)]
    bounds = [int(x) for x in cu_seqlens.tolist()]
    return [(a, b, n, n + 1) for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def _chunking(B: int, H: int, L: int, D: int, E: int) -> tuple[int, int]:
    """(chunk size C, block length in steps, a multiple of C) for a run of L ≥ 1 steps."""
    C = max(1, min(CHUNK_SIZE, L))
    per_chunk = B * H * (3 * C * C + 4 * C * (D + E) + 4 * D * E)
    chunks_per_block = max(1, min(-(-L // C), BLOCK_ELEMENTS // per_chunk))
    return C, C * chunks_per_block


def _output_cotangent(do: Tensor, o: Tensor, den: Tensor, normalize: bool, eps: float) -> Tensor:
    """dO' = [dnum | dden], the cotangent of [num | den] = q̃ᵀS' (see the module docstring)."""
    if not normalize:
        return torch.cat([do, torch.zeros_like(do[..., :1])], dim=-1)
    inv = 1.0 / (den + eps)
    dden = -(do * o).sum(-1) * inv
    return torch.cat([do * inv.unsqueeze(-1), dden.unsqueeze(-1)], dim=-1)


# --------------------------------------------------------------------------- causal cores, blocked over time
# The inputs stay in their [B, T, H, ·] layout; each block of steps is copied into small heads-first buffers
# (cache-resident), processed, and its results written straight into the time-major outputs. No whole-sequence
# temporary exists (on CPU those cost a fresh, page-faulting allocation each, besides the memory traffic).


def _load_block(x: Tensor, t0: int, t1: int, group: int, C: int, dtype: torch.dtype,
                feature_map: Optional[str] = None) -> Tensor:
    """``x[:, t0:t1]`` (``[B, ·, Hx, F]``) -> new contiguous ``[B, Hx·group, n, C, F]`` in ``dtype`` with the
    feature map applied and zero rows after the L = t1 − t0 real steps (n = ⌈L/C⌉)."""
    B, _, Hx, Fd = x.shape
    L = t1 - t0
    n = -(-L // C)
    H = Hx * group
    buf = torch.empty((B, H, n * C, Fd), dtype=dtype, device=x.device)
    if n * C != L:
        buf[:, :, L:].zero_()
    body = buf[:, :, :L]
    src = x[:, t0:t1].transpose(1, 2)
    if group > 1:
        body.unflatten(1, (Hx, group)).copy_(src.unsqueeze(2))
    else:
        body.copy_(src)
    if feature_map == "elu":  # e^{min(x,0)} + max(x,0), in place
        neg = body.clamp(max=0).exp_()
        body.clamp_(min=0).add_(neg)
    elif feature_map == "relu":
        body.clamp_(min=0)
    return buf.view(B, H, n, C, Fd)


def _store_block(dst: Tensor, t0: int, t1: int, x: Tensor, kv_heads: int) -> None:
    """``dst[:, t0:t1] = x`` with x ``[B, H, n, C, F]`` (padded rows dropped), summing each group of
    H // kv_heads consecutive heads when the destination has fewer heads (GQA)."""
    B, H, n, C, Fd = x.shape
    x = x.reshape(B, H, n * C, Fd)[:, :, :t1 - t0]
    if H != kv_heads:
        x = x.unflatten(1, (kv_heads, H // kv_heads)).sum(2)
    dst[:, t0:t1].copy_(x.transpose(1, 2))


def _strict_triangle(n: int, like: Tensor, upper: bool) -> Tensor:
    """``[n, n]`` ones strictly below (``upper``: above) the diagonal, in ``like``'s dtype."""
    ones = torch.ones((n, n), dtype=like.dtype, device=like.device)
    return ones.triu_(1) if upper else ones.tril_(-1)


def _exclusive_prefix(x: Tensor, start: Tensor) -> Tensor:
    """``start + Σ_{c' < c} x_{c'}`` along dim 2 of ``x [B, H, n, ...]`` (what enters each chunk of a block), as a
    matmul by a strictly lower triangular ones matrix (``cumsum`` along a middle dim is slow on CPU)."""
    B, H, n = x.shape[:3]
    out = torch.matmul(_strict_triangle(n, x, upper=False), x.reshape(B, H, n, -1)).view(x.shape)
    return out.add_(start.unsqueeze(2))


def _exclusive_suffix(x: Tensor, end: Tensor) -> Tensor:
    """``end + Σ_{c' > c} x_{c'}`` along dim 2 of ``x [B, H, n, ...]`` (the cotangent leaving each chunk)."""
    B, H, n = x.shape[:3]
    out = torch.matmul(_strict_triangle(n, x, upper=True), x.reshape(B, H, n, -1)).view(x.shape)
    return out.add_(end.unsqueeze(2))


def _causal_forward_blocked(q: Tensor, k: Tensor, v: Tensor, t0: int, t1: int, init: Optional[Tensor], o: Tensor,
                            feature_map: str, normalize: bool, scale: float, eps: float, cdt: torch.dtype) -> Tensor:
    """Causal forward of the steps [t0, t1) of ``q [B, T, H, D]``, ``k, v [B, T, Hk, ·]``: writes ``o[:, t0:t1]``
    and returns the final state S'_L = [S | z] ``[B, H, D, Dv + 1]`` (in ``cdt``). S and z are carried apart
    (matmuls Dv wide, not Dv + 1: an odd width costs ~20 % in the CPU BLAS); den = q̃·z_before + Σ_s tril(Q Kᵀ)."""
    B, _, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    G = H // Hk
    L = t1 - t0
    S = init[..., :Dv].clone() if init is not None else q.new_zeros((B, H, D, Dv), dtype=cdt)
    z = init[..., Dv].clone() if init is not None else q.new_zeros((B, H, D), dtype=cdt)
    C, block = _chunking(B, H, L, D, Dv + 1)
    for a in range(t0, t1, block):
        b = min(t1, a + block)
        Q = _load_block(q, a, b, 1, C, cdt, feature_map)
        if scale != 1.0:
            Q.mul_(scale)
        K = _load_block(k, a, b, G, C, cdt, feature_map)
        V = _load_block(v, a, b, G, C, cdt)
        chunk_kv = K.transpose(-1, -2) @ V                                  # K_cᵀ V_c [B, H, n, D, Dv]
        chunk_k = K.sum(-2)                                                 # Σ k̃ per chunk [B, H, n, D]
        S_before = _exclusive_prefix(chunk_kv, S)
        z_before = _exclusive_prefix(chunk_k, z)
        S = S_before[:, :, -1] + chunk_kv[:, :, -1]
        z = z_before[:, :, -1] + chunk_k[:, :, -1]
        intra = (Q @ K.transpose(-1, -2)).tril_()                           # tril(Q_c K_cᵀ) [B, H, n, C, C]
        num = Q @ S_before                                                  # [B, H, n, C, Dv]
        num.view(-1, C, Dv).baddbmm_(intra.view(-1, C, C), V.view(-1, C, Dv))
        if normalize:
            den = (Q @ z_before.unsqueeze(-1)).squeeze(-1).add_(intra.sum(-1)).add_(eps)
            num.div_(den.unsqueeze(-1))
        _store_block(o, a, b, num, H)
    return torch.cat([S, z.unsqueeze(-1)], dim=-1)


def _causal_backward_blocked(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, t0: int, t1: int,
                             init: Optional[Tensor], dfinal: Optional[Tensor], feature_map: str, normalize: bool,
                             scale: float, eps: float, cdt: torch.dtype, dq: Tensor, dk: Tensor, dv: Tensor) -> Tensor:
    """Causal backward of the steps [t0, t1): writes ``dq, dk, dv[:, t0:t1]``, returns dS'_0 ``[B, H, D, Dv + 1]``.
    With dO' = [dnum | dden] split as the state is: dQ = dnum S_beforeᵀ + dden ⊗ z_before + tril(dO'V'ᵀ) K with
    tril(dO'V'ᵀ) = tril(dnum Vᵀ + dden 1ᵀ); dK = V dSᵀ + 1 ⊗ dz + tril(dO'V'ᵀ)ᵀ Q; dV = K dS + tril(Q Kᵀ)ᵀ dnum."""
    B, _, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    G = H // Hk
    L = t1 - t0
    dS = dfinal[..., :Dv].clone() if dfinal is not None else q.new_zeros((B, H, D, Dv), dtype=cdt)
    dz = dfinal[..., Dv].clone() if dfinal is not None else q.new_zeros((B, H, D), dtype=cdt)
    C, block = _chunking(B, H, L, D, Dv + 1)
    starts = list(range(t0, t1, block))
    # Pass 1 (forward): the state entering each block (K_bᵀ V_b and Σ k̃ per block, no chunking needed).
    block_states = []
    S = init[..., :Dv] if init is not None else q.new_zeros((B, H, D, Dv), dtype=cdt)
    z = init[..., Dv] if init is not None else q.new_zeros((B, H, D), dtype=cdt)
    for a in starts:
        block_states.append((S, z))
        b = min(t1, a + block)
        if b < t1:
            K = _load_block(k, a, b, G, b - a, cdt, feature_map).view(B * H, b - a, D)
            V = _load_block(v, a, b, G, b - a, cdt).view(B * H, b - a, Dv)
            S = torch.baddbmm(S.reshape(-1, D, Dv), K.transpose(-1, -2), V).view(B, H, D, Dv)
            z = z + K.sum(-2).view(B, H, D)
    # Pass 2 (reverse): (dS, dz) is the cotangent of the state leaving the current block.
    for a, (S_in, z_in) in zip(reversed(starts), reversed(block_states)):
        b = min(t1, a + block)
        fq = _load_block(q, a, b, 1, C, cdt, feature_map)
        Q = fq * scale if scale != 1.0 else fq
        K = _load_block(k, a, b, G, C, cdt, feature_map)
        V = _load_block(v, a, b, G, C, cdt)
        S_before = _exclusive_prefix(K.transpose(-1, -2) @ V, S_in)
        intra = (Q @ K.transpose(-1, -2)).tril_()
        dnum = _load_block(do, a, b, 1, C, cdt)                                  # padded rows 0
        dden = None
        z_before = None
        if normalize:
            z_before = _exclusive_prefix(K.sum(-2), z_in)
            den = (Q @ z_before.unsqueeze(-1)).squeeze(-1).add_(intra.sum(-1)).add_(eps)   # [B, H, n, C]
            ob = _load_block(o, a, b, 1, C, cdt)
            dden = (dnum * ob).sum(-1).neg_().div_(den)                         # −(do·o)/den
            dnum.div_(den.unsqueeze(-1))
        q_dnum = Q.transpose(-1, -2) @ dnum                                     # Q_cᵀ dnum_c [B, H, n, D, Dv]
        dS_after = _exclusive_suffix(q_dnum, dS)
        dO_V = dnum @ V.transpose(-1, -2)                                        # [B, H, n, C, C]
        if dden is not None:
            q_dden = (dden.unsqueeze(-2) @ Q).squeeze(-2)                         # Q_cᵀ dden_c [B, H, n, D]
            dz_after = _exclusive_suffix(q_dden, dz)
            dO_V.add_(dden.unsqueeze(-1))
        else:
            dz_after = dz.unsqueeze(2)
        dO_V.tril_()
        dQ = dnum @ S_before.transpose(-1, -2)
        if dden is not None:
            dQ.add_(dden.unsqueeze(-1) * z_before.unsqueeze(-2))
        dQ.view(-1, C, D).baddbmm_(dO_V.view(-1, C, C), K.view(-1, C, D))
        dK = V @ dS_after.transpose(-1, -2)
        dK.add_(dz_after.unsqueeze(-2))
        dK.view(-1, C, D).baddbmm_(dO_V.view(-1, C, C).transpose(-1, -2), Q.view(-1, C, D))
        dV = K @ dS_after
        dV.view(-1, C, Dv).baddbmm_(intra.view(-1, C, C).transpose(-1, -2), dnum.view(-1, C, Dv))
        dS = dS_after[:, :, 0] + q_dnum[:, :, 0]
        dz = dz_after[:, :, 0] + q_dden[:, :, 0] if dden is not None else dz
        # through the scale and the feature maps: dq = scale·φ'(q)·dq̃, dk = φ'(k)·dk̃
        if feature_map == "elu":   # φ' = 1 for x > 0 (φ > 1), eˣ = φ for x ≤ 0: φ' = min(φ, 1)
            dQ.mul_(fq.clamp_(max=1))
            dK.mul_(K.clamp_(max=1))
        elif feature_map == "relu":
            dQ.mul_(fq > 0)
            dK.mul_(K > 0)
        if scale != 1.0:
            dQ.mul_(scale)
        _store_block(dq, a, b, dQ, H)
        _store_block(dk, a, b, dK, Hk)
        _store_block(dv, a, b, dV, Hk)
    return torch.cat([dS, dz.unsqueeze(-1)], dim=-1)


# --------------------------------------------------------------------------- non-causal cores on one run
# qt, kt: [B, H, L, D]; va: [B, H, L, E] (E = Dv + 1); states [B, H, D, E]; all in the compute dtype.


def _full_forward(qt: Tensor, kt: Tensor, va: Tensor, init: Optional[Tensor], out: Tensor) -> Tensor:
    """Non-causal: S' = S'_0 + K'ᵀ V', out = Q S'; returns S'."""
    state = kt.transpose(-1, -2) @ va
    if init is not None:
        state = state + init
    out.copy_(qt @ state)
    return state


def _full_backward(qt: Tensor, kt: Tensor, va: Tensor, do: Tensor, o: Tensor, init: Optional[Tensor],
                   dfinal: Optional[Tensor], normalize: bool, eps: float,
                   dqt: Tensor, dkt: Tensor, dva: Tensor) -> Tensor:
    """Non-causal backward: dQ = dO' S'ᵀ, dS' = dS'_T + Qᵀ dO', dK = V' dS'ᵀ, dV' = K dS'."""
    state = kt.transpose(-1, -2) @ va
    if init is not None:
        state = state + init
    den = (qt @ state[..., -1:]).squeeze(-1) if normalize else None
    dO = _output_cotangent(do, o, den, normalize, eps)
    dS = qt.transpose(-1, -2) @ dO
    if dfinal is not None:
        dS = dS + dfinal
    dqt.copy_(dO @ state.transpose(-1, -2))
    dkt.copy_(va @ dS.transpose(-1, -2))
    dva.copy_(kt @ dS)
    return dS


# --------------------------------------------------------------------------- backend entry points


def linear_attention_fwd(q: Tensor, k: Tensor, v: Tensor, S0: Optional[Tensor], z0: Optional[Tensor],
                         cu_seqlens: Optional[Tensor], causal: bool, feature_map: str, normalize: bool,
                         scale: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """-> (o [B, T, H, Dv] in q.dtype, S_T [N, H, D, Dv], z_T [N, H, D]) (states in the state dtype)."""
    B, T, H, D = q.shape
    if T == 1 and causal and cu_seqlens is None and (S0 is None) == (z0 is None):   # the decoding step
        o, (S_T, z_T) = linear_step(q[:, 0], k[:, 0], v[:, 0], None if S0 is None else (S0, z0),
                                    feature_map=feature_map, normalize=normalize, scale=scale, eps=eps)
        return o.unsqueeze(1), S_T, z_T
    Hk, Dv = k.shape[2], v.shape[3]
    G = H // Hk
    cdt = state_dtype(q.dtype)
    segments = _segments(B, T, cu_seqlens)
    N = segments[-1][3]
    final = new_empty((N, H, D, Dv + 1), dtype=cdt, device=q.device)  # [S_T | z_T]
    o = new_empty((B, T, H, Dv), dtype=q.dtype, device=q.device)
    S0a = _augment_state(S0, z0, D, Dv, q.new_empty((), dtype=cdt))
    if causal:
        for t0, t1, n0, n1 in segments:
            init = S0a[n0:n1] if S0a is not None else None
            final[n0:n1] = _causal_forward_blocked(q, k, v, t0, t1, init, o, feature_map, normalize, scale, eps, cdt)
    else:
        qt = scale * _feature_map(_heads_first(q, 1, cdt), feature_map)
        kt = _feature_map(_heads_first(k, G, cdt), feature_map)
        va = _augment_values(_heads_first(v, G, cdt))
        out = new_empty((B, H, T, Dv + 1), dtype=cdt, device=q.device)  # [num | den]
        for t0, t1, n0, n1 in segments:
            init = S0a[n0:n1] if S0a is not None else None
            final[n0:n1] = _full_forward(qt[:, :, t0:t1], kt[:, :, t0:t1], va[:, :, t0:t1], init, out[:, :, t0:t1])
        num = out[..., :Dv]
        o.copy_((num / (out[..., Dv:] + eps) if normalize else num).transpose(1, 2))
    S_T = final[..., :Dv].clone(memory_format=torch.contiguous_format)
    z_T = final[..., Dv].clone(memory_format=torch.contiguous_format)
    return o, S_T, z_T


def linear_attention_bwd(do: Tensor, dS_T: Optional[Tensor], dz_T: Optional[Tensor], q: Tensor, k: Tensor,
                         v: Tensor, o: Tensor, S0: Optional[Tensor], z0: Optional[Tensor],
                         cu_seqlens: Optional[Tensor], causal: bool, feature_map: str, normalize: bool,
                         scale: float, eps: float):
    """-> (dq, dk, dv, dS0, dz0); dS0/dz0 are None when S0 is None."""
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    G = H // Hk
    cdt = state_dtype(q.dtype)
    like = q.new_empty((), dtype=cdt)
    S0a = _augment_state(S0, z0, D, Dv, like)
    dfinal = _augment_state(dS_T, dz_T, D, Dv, like)
    segments = _segments(B, T, cu_seqlens)
    N = segments[-1][3]
    dinit = new_empty((N, H, D, Dv + 1), dtype=cdt, device=q.device)
    if causal:
        dq = new_empty((B, T, H, D), dtype=q.dtype, device=q.device)
        dk = new_empty((B, T, Hk, D), dtype=k.dtype, device=q.device)
        dv = new_empty((B, T, Hk, Dv), dtype=v.dtype, device=q.device)
        for t0, t1, n0, n1 in segments:
            init = S0a[n0:n1] if S0a is not None else None
            dfin = dfinal[n0:n1] if dfinal is not None else None
            dinit[n0:n1] = _causal_backward_blocked(do, q, k, v, o, t0, t1, init, dfin, feature_map, normalize, scale,
                                                    eps, cdt, dq, dk, dv)
    else:
        dq, dk, dv = _full_backward_entry(do, q, k, v, o, S0a, dfinal, segments, dinit, feature_map, normalize,
                                          scale, eps, cdt)
    if S0 is None:
        return dq, dk, dv, None, None
    dS0 = dinit[..., :Dv].to(S0.dtype).clone(memory_format=torch.contiguous_format)
    dz0 = dinit[..., Dv].to(z0.dtype if z0 is not None else S0.dtype).clone(memory_format=torch.contiguous_format)
    return dq, dk, dv, dS0, dz0


def _full_backward_entry(do, q, k, v, o, S0a, dfinal, segments, dinit, feature_map, normalize, scale, eps, cdt):
    """Non-causal backward on whole-sequence heads-first copies -> (dq, dk, dv) in the input dtypes."""
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[3]
    G = H // Hk
    q_h = _heads_first(q, 1, cdt)
    k_h = _heads_first(k, G, cdt)
    fq = _feature_map(q_h, feature_map)
    qt = scale * fq
    kt = _feature_map(k_h, feature_map)
    va = _augment_values(_heads_first(v, G, cdt))
    do_h = _heads_first(do, 1, cdt)
    o_h = _heads_first(o, 1, cdt)
    dqt = new_empty((B, H, T, D), dtype=cdt, device=q.device)
    dkt = new_empty((B, H, T, D), dtype=cdt, device=q.device)
    dva = new_empty((B, H, T, Dv + 1), dtype=cdt, device=q.device)
    for t0, t1, n0, n1 in segments:
        init = S0a[n0:n1] if S0a is not None else None
        dfin = dfinal[n0:n1] if dfinal is not None else None
        ts = slice(t0, t1)
        dinit[n0:n1] = _full_backward(qt[:, :, ts], kt[:, :, ts], va[:, :, ts], do_h[:, :, ts], o_h[:, :, ts], init,
                                      dfin, normalize, eps, dqt[:, :, ts], dkt[:, :, ts], dva[:, :, ts])
    # through the scale and the feature maps
    dq_h = dqt * scale
    # elu+1: φ' = 1 for x > 0 (where φ = x + 1 > 1), eˣ = φ for x ≤ 0 (φ ≤ 1): φ' = min(φ, 1), from φ itself
    grad_q = fq.clamp(max=1) if feature_map == "elu" else _feature_map_grad(q_h, feature_map)
    if grad_q is not None:
        dq_h = dq_h * grad_q
    grad_k = kt.clamp(max=1) if feature_map == "elu" else _feature_map_grad(k_h, feature_map)
    dk_h = dkt * grad_k if grad_k is not None else dkt
    return _time_first(dq_h, H, q.dtype), _time_first(dk_h, Hk, k.dtype), _time_first(dva[..., :Dv], Hk, v.dtype)
