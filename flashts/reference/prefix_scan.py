"""Aaren (SPEC §4) and Latte (SPEC §5) as dense masked softmax-weighted means.

The running maxima are detached: they only keep the exponentials finite and the results do not depend
on them, so, as the SPEC says, they carry no gradient (the state (m, u, w) stands for (u·e^m, w·e^m)).
"""
import torch

from ._packed import per_sequence


def _causal_softmax_mean(s, v, state):
    """Per-row prefix softmax mean.

    s: logits ``[B, T, H, L]``; v: ``[B, T, H, Dv]``; state: ``(m [B,H,L], u [B,H,L], w [B,H,L,Dv])`` or None.
    Returns mean ``[B, T, H, L, Dv]`` and the final state.
    mean[t, l] = (w0 e^{m0-M} + Σ_{i≤t} e^{s_i - M} v_i) / (u0 e^{m0-M} + Σ_{i≤t} e^{s_i - M}), M = running max.
    """
    B, T, H, L = s.shape
    Dv = v.shape[-1]
    if state is None:
        m0 = s.new_full((B, H, L), float("-inf"))
        u0 = s.new_zeros(B, H, L)
        w0 = s.new_zeros(B, H, L, Dv)
    else:
        m0, u0, w0 = state
    m0 = m0.detach()
    M = torch.maximum(torch.cummax(s, dim=1).values, m0.unsqueeze(1)).detach()  # [B, T, H, L]
    # W[b, h, l, t, i] = e^{s_i - M_t} for i <= t
    sb = s.permute(0, 2, 3, 1)  # [B, H, L, T]
    Mb = M.permute(0, 2, 3, 1)
    causal = torch.ones(T, T, dtype=torch.bool, device=s.device).tril()
    diff = (sb.unsqueeze(-2) - Mb.unsqueeze(-1)).masked_fill(~causal, float("-inf"))
    W = torch.exp(diff)  # [B, H, L, T(t), T(i)]
    carry = torch.exp(m0.unsqueeze(-1) - Mb)  # [B, H, L, T]
    carry = torch.where(torch.isfinite(m0).unsqueeze(-1), carry, torch.zeros_like(carry))
    num = torch.einsum("bhlti,bihe->bhlte", W, v) + carry.unsqueeze(-1) * w0.unsqueeze(-2)
    den = W.sum(-1) + carry * u0.unsqueeze(-1)
    mean = (num / den.unsqueeze(-1)).permute(0, 3, 1, 2, 4)  # [B, T, H, L, Dv]
    mT = (torch.maximum(m0, s.max(dim=1).values) if T > 0 else m0).detach()
    eT = torch.exp(s - mT.unsqueeze(1))  # [B, T, H, L]
    c0 = torch.where(torch.isfinite(m0), torch.exp(m0 - mT), torch.zeros_like(m0))
    uT = c0 * u0 + eT.sum(1)
    wT = c0.unsqueeze(-1) * w0 + torch.einsum("bthl,bthe->bhle", eT, v)
    return mean, (mT, uT, wT)


def aaren_attention(q, k, v, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    if cu_seqlens is not None:
        fn = lambda k_, v_, st: aaren_attention(  # noqa: E731
            q, k_, v_, scale=scale, initial_state=st, output_final_state=output_final_state)
        return per_sequence(fn, cu_seqlens, (k, v), initial_state, output_final_state)
    B, T, H, D = k.shape
    if scale is None:
        scale = D ** -0.5
    qb = q if q.dim() == 3 else q.unsqueeze(0).expand(B, H, D)
    s = scale * torch.einsum("bhd,bthd->bth", qb, k).unsqueeze(-1)  # [B, T, H, 1]
    state = None
    if initial_state is not None:
        m0, u0, w0 = initial_state
        state = (m0.unsqueeze(-1), u0.unsqueeze(-1), w0.unsqueeze(-2))
    mean, (mT, uT, wT) = _causal_softmax_mean(s, v, state)
    o = mean[:, :, :, 0]
    if output_final_state:
        return o, (mT[..., 0], uT[..., 0], wT[..., 0, :])
    return o


def latte_attention(q, k, v, *, causal=True, initial_state=None, output_final_state=False, cu_seqlens=None):
    if cu_seqlens is not None:
        fn = lambda q_, k_, v_, st: latte_attention(  # noqa: E731
            q_, k_, v_, causal=causal, initial_state=st, output_final_state=output_final_state)
        return per_sequence(fn, cu_seqlens, (q, k, v), initial_state, output_final_state)
    p = torch.softmax(q, dim=-1)  # p(l | t): [B, T, H, L]
    if not causal:
        a = torch.softmax(k, dim=1)  # softmax over time per latent
        mean = torch.einsum("bshl,bshe->bhle", a, v)
        return torch.einsum("bthl,bhle->bthe", p, mean)
    mean, final = _causal_softmax_mean(k, v, initial_state)
    o = torch.einsum("bthl,bthle->bthe", p, mean)
    return (o, final) if output_final_state else o
