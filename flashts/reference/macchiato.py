"""Latte Macchiato (SPEC §7) as a dense masked softmax plus Latte's dense causal means, one sequence at a time.

y_t = p(0|t)·A_t + Σ_{l=1..L} p(l|t)·G_{t,l} with p(·|t) = softmax(mix_t) over the L+1 entries, A the causal
sliding-window attention (window (left, 0)) over the keys of the window cache followed by the new keys, and G the
causal per-latent softmax means of Latte (SPEC §5) continued from (m, α, S).

State (see ``flashts.ops.macchiato``): ``(k_win [N,W,H,D], v_win [N,W,H,Dv], n_win [N] int32, m [N,H,L],
alpha [N,H,L], S [N,H,L,Dv])`` with W = left: the last ``n_win`` keys/values in time order, right-aligned
(slots W − n_win … W − 1 hold them, the rest is zero).
"""
import torch

from .prefix_scan import _causal_softmax_mean


def _one_sequence(q, k, v, mix, latent_k, left, scale, state):
    """Inputs ``[1, T, H, ·]``; state a tuple of ``[1, ...]`` tensors or None. Returns (y, final state)."""
    T, H, D = q.shape[1], q.shape[2], q.shape[3]
    Dv, L = v.shape[3], latent_k.shape[3]
    W = max(left, 0)
    if state is None:
        kw = k.new_zeros(1, W, H, D)
        vw = v.new_zeros(1, W, H, Dv)
        n = 0
        lstate = None
    else:
        kw, vw, nw, m0, a0, S0 = state
        kw, vw = kw.to(k.dtype), vw.to(v.dtype)
        n = int(nw[0])
        lstate = (m0, a0, S0)
    k_ext = torch.cat([kw[:, W - n:], k], dim=1)  # [1, n + T, H, D]: the cached keys, then the new ones
    v_ext = torch.cat([vw[:, W - n:], v], dim=1)
    E = n + T
    i = torch.arange(n, E, device=q.device).unsqueeze(1)  # ext positions of the queries
    j = torch.arange(E, device=q.device).unsqueeze(0)
    allowed = j <= i
    if left >= 0:
        allowed = allowed & (j >= i - left)
    s = scale * torch.einsum("bthd,bshd->bhts", q, k_ext)
    s = s.masked_fill(~allowed, float("-inf"))
    A = torch.einsum("bhts,bshe->bthe", torch.softmax(s, dim=-1), v_ext)  # [1, T, H, Dv]
    G, (mT, aT, ST) = _causal_softmax_mean(latent_k, v, lstate)  # [1, T, H, L, Dv]
    p = torch.softmax(mix, dim=-1)  # [1, T, H, L + 1]
    y = p[..., 0:1] * A + torch.einsum("bthl,bthle->bthe", p[..., 1:], G)
    keep = min(E, W)
    kT = torch.cat([k.new_zeros(1, W - keep, H, D), k_ext[:, E - keep:]], dim=1)
    vT = torch.cat([v.new_zeros(1, W - keep, H, Dv), v_ext[:, E - keep:]], dim=1)
    nT = torch.tensor([keep], dtype=torch.int32, device=q.device)
    return y, (kT, vT, nT, mT, aT, ST)


def latte_macchiato_attention(q, k, v, mix, latent_k, *, window, scale=None, initial_state=None,
                              output_final_state=False, cu_seqlens=None):
    left = window[0]
    if scale is None:
        scale = q.shape[-1] ** -0.5
    B, T = q.shape[:2]
    if cu_seqlens is not None:
        bounds = [int(x) for x in cu_seqlens.tolist()]
        rows = [(0, a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        rows = [(b, 0, T) for b in range(B)]
    outs, finals = [], []
    for n, (b, t0, t1) in enumerate(rows):
        st = None if initial_state is None else tuple(s[n:n + 1] for s in initial_state)
        y, fin = _one_sequence(*(x[b:b + 1, t0:t1] for x in (q, k, v, mix, latent_k)), left, scale, st)
        outs.append(y)
        finals.append(fin)
    y = torch.cat(outs, dim=1) if cu_seqlens is not None else torch.cat(outs, dim=0)
    if not output_final_state:
        return y
    return y, tuple(torch.cat(parts, dim=0) for parts in zip(*finals))
