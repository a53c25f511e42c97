"""Baseline for the benchmarks: the ORIGINAL Autoformer AutoCorrelation algorithm, as its users run it.

An independent re-implementation (no code copied) of ``AutoCorrelation`` from Autoformer (Wu et al. 2021,
``layers/AutoCorrelation.py`` of thuml/Autoformer and of the Time-Series-Library), in the flashts layout
``q [B, L, H, E]``, ``k [B, S, H, E]``, ``v [B, S, H, D]`` -> ``o [B, L, H, D]``, differentiable by plain autograd.
What it computes, and what it materialises (that is the point of the baseline):

1. Align lengths: L > S → k, v zero-padded to L (``torch.cat`` with zeros); else their first L steps.
2. ``corr = irfft(rfft(q) · conj(rfft(k)))`` per (b, h, e) along time, on the [B, H, E, L] permuted copies:
   H·E inverse FFTs per sample and a full [B, H, E, L] correlation tensor.
3. ``mean_value = corr.mean over H and E`` → [B, L]; K = int(factor · ln L).
4. ``mode="train"`` (``time_delay_agg_training``): delays = top-K of mean_value averaged over the batch; the
   weights are the softmax of mean_value at those delays, stacked per delay; for each delay the whole
   [B, H, D, L] value tensor is ``torch.roll``-ed by −τ and added, times the weight ``repeat``-ed to
   [B, H, D, L].
   ``mode="infer"`` (``time_delay_agg_inference``): per-sample top-K of mean_value; values repeated twice along
   time ([B, H, D, 2L]); for each delay an index tensor ``arange(L) + τ_b`` of shape [B, H, D, L] and a
   ``torch.gather``, times the repeated weight.
   Either way: o[b, t] = Σ_i softmax(r[b, τ])_i · v[b, (t + τ_i) mod L].

Deliberate deviations from the original code, so that it computes the same function as SPEC §3 (the test in
tests/test_auto_correlation.py checks it against flashts.reference.auto_correlation):
* ``irfft(..., n=L)``: the original calls ``irfft`` without ``n``, which returns L−1 steps for odd L.
* K = min(L, max(1, int(factor · ln L))): the original's K can be 0 (L ≤ 2, small factor) or exceed L.
* padding zeros are shaped like k and v respectively (the original shapes both like q, which breaks E ≠ D).
* the accumulator has the dtype of the values (the original starts from a float32 zero tensor); the
  output is cast to q's dtype.
"""
from __future__ import annotations

import math

import torch


def _top_k(L: int, factor: float) -> int:
    return min(L, max(1, int(factor * math.log(L))))


def _delay_agg_training(values: torch.Tensor, corr: torch.Tensor, factor: float) -> torch.Tensor:
    """values [B, H, D, L], corr [B, H, E, L] -> [B, H, D, L]: shared top-K delays, roll loop."""
    B, H, D, L = values.shape
    K = _top_k(L, factor)
    mean_value = corr.mean(dim=1).mean(dim=1)  # [B, L]
    index = torch.topk(mean_value.mean(dim=0), K, dim=-1).indices  # [K], shared by the batch
    weights = torch.stack([mean_value[:, index[i]] for i in range(K)], dim=-1)  # [B, K]
    w = torch.softmax(weights, dim=-1)
    acc = torch.zeros_like(values)
    for i in range(K):
        rolled = torch.roll(values, -int(index[i]), -1)
        acc = acc + rolled * w[:, i].reshape(B, 1, 1, 1).repeat(1, H, D, L)
    return acc


def _delay_agg_inference(values: torch.Tensor, corr: torch.Tensor, factor: float) -> torch.Tensor:
    """values [B, H, D, L], corr [B, H, E, L] -> [B, H, D, L]: per-sample top-K delays, gather loop."""
    B, H, D, L = values.shape
    K = _top_k(L, factor)
    base = torch.arange(L, device=values.device).reshape(1, 1, 1, L).repeat(B, H, D, 1)
    mean_value = corr.mean(dim=1).mean(dim=1)  # [B, L]
    weights, delay = torch.topk(mean_value, K, dim=-1)  # [B, K] each
    w = torch.softmax(weights, dim=-1)
    doubled = values.repeat(1, 1, 1, 2)  # [B, H, D, 2L]: index t + τ < 2L needs no modulo
    acc = torch.zeros_like(values)
    for i in range(K):
        idx = base + delay[:, i].reshape(B, 1, 1, 1).repeat(1, H, D, L)
        pattern = torch.gather(doubled, dim=-1, index=idx)
        acc = acc + pattern * w[:, i].reshape(B, 1, 1, 1).repeat(1, H, D, L)
    return acc


def autoformer_auto_correlation(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, factor: float = 1.0,
                                mode: str = "train") -> torch.Tensor:
    """Original Autoformer auto-correlation (see module docstring). ``mode``: ``"train"`` or ``"infer"``."""
    if mode not in ("train", "infer"):
        raise ValueError(f"mode: expected 'train' or 'infer', got {mode!r}")
    B, L, H, E = q.shape
    S = k.shape[1]
    if L > S:
        k = torch.cat([k, torch.zeros_like(k[:, :1]).expand(B, L - S, H, k.shape[-1])], dim=1)
        v = torch.cat([v, torch.zeros_like(v[:, :1]).expand(B, L - S, H, v.shape[-1])], dim=1)
    else:
        k = k[:, :L]
        v = v[:, :L]
    # period-based dependencies: one FFT correlation per (b, h, e)
    q_fft = torch.fft.rfft(q.permute(0, 2, 3, 1).contiguous(), dim=-1)
    k_fft = torch.fft.rfft(k.permute(0, 2, 3, 1).contiguous(), dim=-1)
    corr = torch.fft.irfft(q_fft * torch.conj(k_fft), n=L, dim=-1)  # [B, H, E, L]
    values = v.permute(0, 2, 3, 1).contiguous()  # [B, H, D, L]
    if mode == "train":
        agg = _delay_agg_training(values, corr, factor)
    else:
        agg = _delay_agg_inference(values, corr, factor)
    return agg.permute(0, 3, 1, 2).contiguous().to(q.dtype)  # [B, L, H, D]
