"""Baseline and test oracle: the ORIGINAL Informer ProbSparse attention algorithm, as its users run it.

An independent re-implementation (no code copied) of ``ProbAttention`` of the Time-Series-Library
(``layers/SelfAttention_Family.py``, after Zhou et al. 2021), written from its published definition, with its
call ``forward(queries [B, L_Q, H, D], keys [B, L_K, H, D], values [B, L_K, H, Dv], attn_mask, tau, delta)`` and
its return value ``(context [B, H, L_Q, Dv], attn)``. What it computes and what it materialises (that is the
point of the baseline):

1. ``_prob_QK``: K is expanded to ``[B, H, L_Q, L_K, E]`` (an ``expand`` view), the sampled keys
   ``K_expand[:, :, arange(L_Q)[:, None], index_sample]`` are gathered into ``[B, H, L_Q, U, E]`` (a copy),
   ``index_sample = torch.randint(L_K, (L_Q, U))`` from the global CPU generator; the sampled scores are
   ``Q[..., None, :] @ K_sampleᵀ`` then ``.squeeze()``; M = max − sum / L_K; ``M.topk(u, sorted=False)``;
   the u reduced queries times all keys give the ``[B, H, u, L_K]`` scores.
2. ``_get_initial_context``: ``V.mean`` expanded and cloned (non-causal) or ``V.cumsum`` (causal).
3. ``_update_context``: causal → a ``ProbMask`` (an [L_Q, L_K] triangle expanded to [B, H, L_Q, L_K] and
   indexed at the active rows) fills −inf; softmax; ``attn @ V`` written into the active rows of the context.
   ``output_attention`` → a dense ``[B, H, L_V, L_V]`` map of 1/L_V with the active rows replaced.
4. ``U = factor·⌈ln L_K⌉``, ``u = factor·⌈ln L_Q⌉``, each capped at the length; scale = ``scale or D**-0.5``;
   ``attention_dropout`` builds a Dropout that is never applied; ``attn_mask`` is ignored.

The one optional deviation: ``fix_squeeze=True`` squeezes only the singleton query axis of the sampled scores;
the original's bare ``.squeeze()`` also drops B == 1, H == 1 or U == 1 axes, which mis-broadcasts the top-u
gather when H == 1 < B (and breaks U == 1 or L_Q == 1). The default reproduces the original as it is.

``OriginalAttentionLayer`` is the library's ``AttentionLayer`` (projections, view as [B, L, H, E], the inner
attention, ``out.view(B, L, -1)`` of the [B, H, L, Dv] context — the layout quirk included, out projection).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class ProbMask:
    """The causal mask of the active rows: ``triu(1)`` of [L, L_K] expanded to [B, H, L, L_K], rows ``index``."""

    def __init__(self, B, H, L, index, scores, device="cpu"):
        tri = torch.ones(L, scores.shape[-1], dtype=torch.bool).to(device).triu(1)
        tri_ex = tri[None, None, :].expand(B, H, L, scores.shape[-1])
        picked = tri_ex[torch.arange(B)[:, None, None], torch.arange(H)[None, :, None], index, :].to(device)
        self._mask = picked.view(scores.shape).to(device)

    @property
    def mask(self):
        return self._mask


class OriginalProbAttention(nn.Module):
    def __init__(self, mask_flag=True, factor=5, scale=None, attention_dropout=0.1, output_attention=False, *,
                 fix_squeeze=False):
        super().__init__()
        self.factor = factor
        self.scale = scale
        self.mask_flag = mask_flag
        self.output_attention = output_attention
        self.dropout = nn.Dropout(attention_dropout)  # never applied, as in the original
        self.fix_squeeze = fix_squeeze

    def _prob_QK(self, Q, K, sample_k, n_top):
        B, H, L_K, E = K.shape
        _, _, L_Q, _ = Q.shape
        K_expand = K.unsqueeze(-3).expand(B, H, L_Q, L_K, E)
        index_sample = torch.randint(L_K, (L_Q, sample_k))
        K_sample = K_expand[:, :, torch.arange(L_Q).unsqueeze(1), index_sample, :]
        Q_K_sample = torch.matmul(Q.unsqueeze(-2), K_sample.transpose(-2, -1))
        Q_K_sample = Q_K_sample.squeeze(-2) if self.fix_squeeze else Q_K_sample.squeeze()
        M = Q_K_sample.max(-1)[0] - torch.div(Q_K_sample.sum(-1), L_K)
        M_top = M.topk(n_top, sorted=False)[1]
        Q_reduce = Q[torch.arange(B)[:, None, None], torch.arange(H)[None, :, None], M_top, :]
        Q_K = torch.matmul(Q_reduce, K.transpose(-2, -1))
        return Q_K, M_top

    def _get_initial_context(self, V, L_Q):
        B, H, L_V, D = V.shape
        if not self.mask_flag:
            V_mean = V.mean(dim=-2)
            return V_mean.unsqueeze(-2).expand(B, H, L_Q, V_mean.shape[-1]).clone()
        assert L_Q == L_V  # self-attention only
        return V.cumsum(dim=-2)

    def _update_context(self, context_in, V, scores, index, L_Q, attn_mask):
        B, H, L_V, D = V.shape
        if self.mask_flag:
            attn_mask = ProbMask(B, H, L_Q, index, scores, device=V.device)
            scores.masked_fill_(attn_mask.mask, -np.inf)
        attn = torch.softmax(scores, dim=-1)
        context_in[torch.arange(B)[:, None, None], torch.arange(H)[None, :, None], index, :] = \
            torch.matmul(attn, V).type_as(context_in)
        if self.output_attention:
            attns = (torch.ones([B, H, L_V, L_V]) / L_V).type_as(attn).to(attn.device)
            attns[torch.arange(B)[:, None, None], torch.arange(H)[None, :, None], index, :] = attn
            return context_in, attns
        return context_in, None

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        B, L_Q, H, D = queries.shape
        _, L_K, _, _ = keys.shape
        queries = queries.transpose(2, 1)
        keys = keys.transpose(2, 1)
        values = values.transpose(2, 1)
        U_part = self.factor * np.ceil(np.log(L_K)).astype("int").item()
        u = self.factor * np.ceil(np.log(L_Q)).astype("int").item()
        U_part = U_part if U_part < L_K else L_K
        u = u if u < L_Q else L_Q
        scores_top, index = self._prob_QK(queries, keys, sample_k=U_part, n_top=u)
        scale = self.scale or 1.0 / math.sqrt(D)
        if scale is not None:
            scores_top = scores_top * scale
        context = self._get_initial_context(values, L_Q)
        context, attn = self._update_context(context, values, scores_top, index, L_Q, attn_mask)
        return context.contiguous(), attn


class OriginalAttentionLayer(nn.Module):
    """The library's ``AttentionLayer`` (same parameter names, same ``out.view(B, L, -1)``)."""

    def __init__(self, attention, d_model, n_heads, d_keys=None, d_values=None):
        super().__init__()
        d_keys = d_keys or (d_model // n_heads)
        d_values = d_values or (d_model // n_heads)
        self.inner_attention = attention
        self.query_projection = nn.Linear(d_model, d_keys * n_heads)
        self.key_projection = nn.Linear(d_model, d_keys * n_heads)
        self.value_projection = nn.Linear(d_model, d_values * n_heads)
        self.out_projection = nn.Linear(d_values * n_heads, d_model)
        self.n_heads = n_heads

    def forward(self, queries, keys, values, attn_mask, tau=None, delta=None):
        B, L, _ = queries.shape
        _, S, _ = keys.shape
        H = self.n_heads
        queries = self.query_projection(queries).view(B, L, H, -1)
        keys = self.key_projection(keys).view(B, S, H, -1)
        values = self.value_projection(values).view(B, S, H, -1)
        out, attn = self.inner_attention(queries, keys, values, attn_mask, tau=tau, delta=delta)
        out = out.view(B, L, -1)
        return self.out_projection(out), attn


def informer_prob_attention(q, k, v, *, factor=5, causal=False, scale=None):
    """The original algorithm in the flashts layout: ``q [B, L_Q, H, D]`` ... -> ``o [B, L_Q, H, Dv]`` (bench)."""
    ctx, _ = OriginalProbAttention(causal, factor, scale, fix_squeeze=True)(q, k, v, None)
    return ctx.transpose(1, 2)
