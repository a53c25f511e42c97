"""Auto-correlation (Autoformer), SPEC §3, step by step as written there."""
import math

import torch


def top_k_delays(L, factor):
    return min(L, max(1, int(factor * math.log(L))))


def auto_correlation(q, k, v, *, factor=1.0, mode="train", return_delays=False):
    B, L, H, E = q.shape
    S = k.shape[1]
    # 1. align lengths
    if L > S:
        k = torch.cat([k, k.new_zeros(B, L - S, H, E)], dim=1)
        v = torch.cat([v, v.new_zeros(B, L - S, H, v.shape[-1])], dim=1)
    else:
        k, v = k[:, :L], v[:, :L]
    # 2. R(τ) per (b, h, e) by FFT along time
    qf = torch.fft.rfft(q.permute(0, 2, 3, 1), dim=-1)
    kf = torch.fft.rfft(k.permute(0, 2, 3, 1), dim=-1)
    R = torch.fft.irfft(qf * torch.conj(kf), n=L, dim=-1)  # [B, H, E, L]
    # 3. mean over heads and channels
    r = R.mean(dim=(1, 2))  # [B, L]
    # 4. top-K delays
    K = top_k_delays(L, factor)
    if mode == "train":
        delays = torch.topk(r.mean(dim=0), K, dim=-1).indices.unsqueeze(0).expand(B, K)
    else:
        delays = torch.topk(r, K, dim=-1).indices
    # 5. weights
    w = torch.softmax(torch.gather(r, 1, delays), dim=-1)  # [B, K]
    # 6. time-delay aggregation: o[b, t] = Σ_i w[b, i] v[b, (t + τ_i) mod L]
    t = torch.arange(L, device=q.device)
    o = torch.zeros(B, L, H, v.shape[-1], dtype=v.dtype, device=v.device)
    for i in range(K):
        idx = (t.unsqueeze(0) + delays[:, i:i + 1]) % L  # [B, L]
        rolled = torch.gather(v, 1, idx[:, :, None, None].expand(B, L, H, v.shape[-1]))
        o = o + w[:, i, None, None, None] * rolled
    if return_delays:
        return o, (delays.contiguous(), w)
    return o
