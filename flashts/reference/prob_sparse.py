"""ProbSparse attention (Informer), SPEC §6, written densely: the full score matrix, the sampled scores read
out of it, the sparsity measure, top-u, and a ``where`` between the softmax rows and the lazy rows."""
import math

import torch


def prob_sparse_sizes(L_Q, L_K, factor):
    """(U sampled keys per query, u active queries): factor·⌈ln L⌉ capped at L; U == 0 makes u == 0."""
    U = min(L_K, factor * math.ceil(math.log(L_K)))
    u = min(L_Q, factor * math.ceil(math.log(L_Q)))
    return U, (u if U > 0 else 0)


def prob_sparse_attention(q, k, v, *, factor=5, causal=False, scale=None, sample_index=None, generator=None,
                          return_index=False):
    B, L_Q, H, D = q.shape
    L_K, Hk = k.shape[1], k.shape[2]
    U, u = prob_sparse_sizes(L_Q, L_K, factor)
    if sample_index is None:
        sample_index = torch.randint(L_K, (L_Q, U), generator=generator)
    sample_index = sample_index.to(q.device)
    if scale is None:
        scale = D ** -0.5
    G = H // Hk
    qh = q.transpose(1, 2)  # [B, H, L_Q, D]
    kh = k.repeat_interleave(G, dim=2).transpose(1, 2)  # [B, H, L_K, D]
    vh = v.repeat_interleave(G, dim=2).transpose(1, 2)  # [B, H, L_K, Dv]
    s = qh @ kh.transpose(-1, -2)  # [B, H, L_Q, L_K], unscaled (M uses unscaled scores)
    rows = torch.arange(L_Q, device=q.device)
    with torch.no_grad():  # the selection carries no gradient
        sampled = s[:, :, rows[:, None], sample_index]  # [B, H, L_Q, U]
        M = sampled.amax(-1) - sampled.sum(-1) / L_K if U > 0 else s.new_zeros(B, H, L_Q)
        index = M.topk(u, dim=-1).indices.sort(dim=-1).values  # [B, H, u]
    scores = scale * s
    if causal:
        scores = scores.masked_fill(rows[None, :] > rows[:, None], float("-inf"))
    active_out = torch.softmax(scores, dim=-1) @ vh
    lazy_out = vh.cumsum(dim=2) if causal else vh.mean(dim=2, keepdim=True).expand(B, H, L_Q, vh.shape[-1])
    active = torch.zeros(B, H, L_Q, dtype=torch.bool, device=q.device)
    active.scatter_(2, index, True)
    o = torch.where(active[..., None], active_out, lazy_out).transpose(1, 2)
    return (o, index) if return_index else o
