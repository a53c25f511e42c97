"""Small helpers shared by the ``flashts.nn`` layers: argument checks, head splitting, TSLib mask reading.

Nothing here computes attention; the layers call the public functions of :mod:`flashts` for that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "triton", "cuda", "torch")


def check_backend(backend) -> str:
    """Fail at construction (not at the first forward) on a misspelt backend name."""
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return backend.lower()


def check_heads(cls: str, d_model: int, n_heads: int, n_kv_heads: int | None = None) -> tuple[int, int]:
    """Return ``(head_dim, n_kv_heads)``; ``d_model`` must split evenly into ``n_heads``."""
    for name, val in (("d_model", d_model), ("n_heads", n_heads)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{cls}: {name} must be a positive int, got {val!r}")
    if d_model % n_heads:
        raise ValueError(f"{cls}: d_model={d_model} must be divisible by n_heads={n_heads}")
    if n_kv_heads is None:
        n_kv_heads = n_heads
    if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, int) or n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"{cls}: n_kv_heads must be a positive int dividing n_heads={n_heads}, got {n_kv_heads!r}")
    return d_model // n_heads, n_kv_heads


def check_input(cls: str, x, d_model: int, rank: int = 3) -> None:
    """``x`` must be ``[B, T, d_model]`` (rank 3) or ``[B, d_model]`` (rank 2, one decoding step)."""
    layout = "[B, T, d_model]" if rank == 3 else "[B, d_model]"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{cls}: x: expected a tensor {layout}, got {type(x).__name__}")
    if x.dim() != rank or x.shape[-1] != d_model:
        raise ValueError(f"{cls}: x: expected a tensor {layout} with d_model={d_model}, got shape {list(x.shape)}")


def feature_map_fn(x: torch.Tensor, feature_map: str) -> torch.Tensor:
    """φ of linear attention (SPEC §1): elu(x)+1, relu(x) or x."""
    if feature_map == "elu":
        return F.elu(x) + 1
    if feature_map == "relu":
        return F.relu(x)
    return x


def pad_time(x: torch.Tensor, T: int, value: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Pad ``x [B, t, ...]`` along time (dim 1) to length ``T`` with ``value`` (no copy when t == T)."""
    t = x.shape[1]
    if t == T:
        return x
    fill = x.new_empty((x.shape[0], T - t) + tuple(x.shape[2:]))
    if isinstance(value, torch.Tensor):
        fill = fill.copy_(value.to(x.dtype).expand_as(fill))
    else:
        fill.fill_(value)
    return torch.cat([x, fill], dim=1)


def mask_kind(cls: str, attn_mask, L: int, S: int) -> str:
    """Read a TSLib-style mask: ``"causal"`` (the causal triangle) or ``"none"`` (nothing masked).

    ``attn_mask`` is either an object with a boolean ``.mask`` (TSLib's ``TriangularCausalMask``) or a boolean
    tensor broadcastable to ``[B, H, L, S]`` with ``True`` = masked out (TSLib's convention). Any other mask
    cannot be honoured by the fused ops and raises ``ValueError``.
    """
    m = getattr(attn_mask, "mask", attn_mask)
    if not isinstance(m, torch.Tensor):
        raise ValueError(f"{cls}: attn_mask: expected None, a boolean tensor [..., L, S] (True = masked) or an object "
                         f"with such a .mask (TriangularCausalMask), got {type(attn_mask).__name__}")
    if m.dtype != torch.bool:
        raise ValueError(f"{cls}: attn_mask: expected a boolean mask (True = masked, TSLib's convention), "
                         f"got dtype {m.dtype}")
    if m.dim() < 2 or tuple(m.shape[-2:]) != (L, S):
        raise ValueError(f"{cls}: attn_mask: expected shape [..., L={L}, S={S}], got {list(m.shape)}")
    if not bool(m.any()):
        return "none"
    if L == S:
        tri = torch.ones(L, S, dtype=torch.bool, device=m.device).triu(1)
        if bool((m == tri).all()):
            return "causal"
    raise ValueError(f"{cls}: attn_mask: the fused op can honour only the causal triangle (TriangularCausalMask: "
                     "True above the diagonal) or a mask with nothing masked; this mask is neither. Use "
                     "attn_mask=None with mask_flag=True for causal attention.")
