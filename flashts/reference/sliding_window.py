"""Sliding-window attention, SPEC §2, as a dense masked softmax."""
import torch



def window_mask(T, left, right, device=None):
    """allowed[i, j] = i - left <= j <= i + right (-1 = unbounded)."""
    i = torch.arange(T, device=device).unsqueeze(1)
    j = torch.arange(T, device=device).unsqueeze(0)
    allowed = torch.ones(T, T, dtype=torch.bool, device=device)
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    return allowed


def sliding_window_attention(q, k, v, *, window, scale=None, cu_seqlens=None, return_lse=False):
    left, right = window
    if cu_seqlens is not None:
        bounds = [int(x) for x in cu_seqlens.tolist()]
        outs, lses = [], []
        for a, b in zip(bounds[:-1], bounds[1:]):
            o_n, lse_n = sliding_window_attention(q[:, a:b], k[:, a:b], v[:, a:b], window=window, scale=scale,
                                                  return_lse=True)
            outs.append(o_n)
            lses.append(lse_n)
        o, lse = torch.cat(outs, dim=1), torch.cat(lses, dim=2)
        return (o, lse) if return_lse else o
    B, T, H, D = q.shape
    G = H // k.shape[2]
    k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)
    if scale is None:
        scale = D ** -0.5
    s = scale * torch.einsum("bthd,bshd->bhts", q, k)
    s = s.masked_fill(~window_mask(T, left, right, q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("bhts,bshe->bthe", p, v)
    return (o, lse) if return_lse else o
