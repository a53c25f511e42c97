"""Linear attention, SPEC §1, as dense masked matrices."""
import torch
import torch.nn.functional as F

from ._packed import per_sequence


def feature_map_fn(x, feature_map):
    if feature_map == "elu":  # elu(x) + 1, written without the cancellation of (eˣ − 1) + 1
        return torch.where(x > 0, x + 1, torch.exp(x.clamp(max=0)))
    if feature_map == "relu":
        return F.relu(x)
    return x


def linear_attention(q, k, v, *, causal=True, feature_map="elu", normalize=True, scale=None, eps=1e-6,
                     initial_state=None, output_final_state=False, cu_seqlens=None):
    if cu_seqlens is not None:
        fn = lambda q_, k_, v_, st: linear_attention(  # noqa: E731
            q_, k_, v_, causal=causal, feature_map=feature_map, normalize=normalize, scale=scale, eps=eps,
            initial_state=st, output_final_state=output_final_state)
        res = per_sequence(fn, cu_seqlens, (q, k, v), initial_state, output_final_state)
        return res
    B, T, H, D = q.shape
    G = H // k.shape[2]
    k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)
    Dv = v.shape[-1]
    if scale is None:
        scale = 1.0 if normalize else D ** -0.5
    qt = scale * feature_map_fn(q, feature_map)
    kt = feature_map_fn(k, feature_map)
    if initial_state is None:
        S0 = q.new_zeros(B, H, D, Dv)
        z0 = q.new_zeros(B, H, D)
    else:
        S0, z0 = initial_state
    A = torch.einsum("bthd,bshd->bhts", qt, kt)
    if causal:
        A = A * torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    num = torch.einsum("bhts,bshe->bthe", A, v) + torch.einsum("bthd,bhde->bthe", qt, S0)
    den = A.sum(-1).transpose(1, 2) + torch.einsum("bthd,bhd->bth", qt, z0)
    o = num / (den + eps).unsqueeze(-1) if normalize else num
    if not output_final_state:
        return o
    S_T = S0 + torch.einsum("bthd,bthe->bhde", kt, v)
    z_T = z0 + kt.sum(1)
    return o, (S_T, z_T)
