"""Informer's ProbSparse attention as a drop-in for the Time-Series-Library's ``ProbAttention``.

``ProbAttention(mask_flag=True, factor=5, scale=None, attention_dropout=0.1, output_attention=False)`` has the
library's constructor, call ``forward(queries [B, L_Q, H, D], keys [B, L_K, H, D], values [B, L_K, H, Dv],
attn_mask, tau=None, delta=None)`` and return value ``(context, attn)`` — including the context's layout
``[B, H, L_Q, Dv]`` (contiguous), which the library's ``AttentionLayer`` then views as ``[B, L_Q, H·Dv]`` as it
is. It calls :func:`flashts.prob_sparse_attention`, which draws the key samples with the original's own call
(``torch.randint(L_K, (L_Q, U))`` on the global CPU generator), so the same ``torch.manual_seed`` gives the
same output as the original, at O((L_Q·U + u·L_K)·D) cost instead of the original's [B, H, L_Q, L_K, D]
expansion. Differences from the original, all where the original fails:

* no ``.squeeze()`` of the sampled scores: B == 1, H == 1, U == 1 and L_Q == 1 work (the original
  mis-broadcasts at H == 1 < B and fails at U == 1 or L_Q == 1); L_K == 1 works (every query gets v_0).
* ``attn_mask``: the original ignores it. flashts ignores no mask silently: None, or a mask equal to what is
  computed (the causal triangle with ``mask_flag=True``, nothing masked with ``mask_flag=False``), else ValueError.

``attention_dropout`` builds ``self.dropout`` and, exactly as in the original, never applies it.
``output_attention=True`` returns the original's map: ``[B, H, L_K, L_K]`` filled with 1/L_K, the active rows
replaced by their softmax rows (dense, O(L²): only for inspection).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ._util import check_backend, mask_kind


class ProbAttention(nn.Module):
    """Drop-in for TSLib's / Informer's ``ProbAttention`` (``mask_flag`` selects the causal form).

    Example::

        from flashts.nn import AttentionLayer, ProbAttention
        layer = AttentionLayer(ProbAttention(False, factor=5, attention_dropout=0.05), d_model=512, n_heads=8)
        x = torch.randn(4, 96, 512)
        y, attn = layer(x, x, x, attn_mask=None)            # y [4, 96, 512], attn None
    """

    def __init__(self, mask_flag=True, factor=5, scale=None, attention_dropout=0.1, output_attention=False, *,
                 backend="auto"):
        super().__init__()
        self.factor = factor
        self.scale = scale
        self.mask_flag = mask_flag
        self.output_attention = output_attention
        self.dropout = nn.Dropout(attention_dropout)  # never applied, as in the original
        self.backend = check_backend(backend)

    def _check_mask(self, attn_mask, L_Q: int, L_K: int) -> None:
        if attn_mask is None:
            return
        kind = mask_kind("ProbAttention", attn_mask, L_Q, L_K)
        if kind != ("causal" if self.mask_flag else "none"):
            raise ValueError(f"ProbAttention: attn_mask: the original ignores the mask and computes the "
                             f"{'causal' if self.mask_flag else 'unmasked'} form (mask_flag={self.mask_flag}); "
                             f"this mask asks for {kind!r} attention. Pass attn_mask=None, or the matching mask_flag")

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        B, L_Q, H, D = queries.shape
        L_K = keys.shape[1]
        self._check_mask(attn_mask, L_Q, L_K)
        scale = self.scale or D ** -0.5
        out, index = ops.prob_sparse_attention(queries, keys, values, factor=self.factor, causal=bool(self.mask_flag),
                                               scale=scale, return_index=True, backend=self.backend)
        context = out.transpose(1, 2).contiguous()  # [B, H, L_Q, Dv], the original's layout
        if not self.output_attention:
            return context, None
        return context, self._attention_map(queries, keys, index, scale)

    def _attention_map(self, queries, keys, index, scale):
        """The original's ``attns``: 1/L_K everywhere, the active rows' softmax written in (dense)."""
        B, L_Q, H, D = queries.shape
        L_K = keys.shape[1]
        q = queries.transpose(1, 2)
        k = keys.transpose(1, 2)
        rows = q.gather(2, index.unsqueeze(-1).expand(B, H, index.shape[-1], D))
        scores = (rows @ k.transpose(-1, -2)) * scale
        if self.mask_flag:
            j = torch.arange(L_K, device=q.device)
            scores = scores.masked_fill(j > index.unsqueeze(-1), float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        attns = (torch.ones((B, H, L_K, L_K), device=attn.device) / L_K).to(attn.dtype)  # as the original rounds
        attns[torch.arange(B)[:, None, None], torch.arange(H)[None, :, None], index, :] = attn
        return attns
