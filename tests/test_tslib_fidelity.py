"""TSLib drop-in fidelity (flashts.nn.tslib): DSAttention's tau/delta honoured exactly or rejected, Aaren's query
variants (every parameter trains), TSLib's odd-length auto-correlation, the plain `X as FullAttention` import.

CPU, backend="torch", float64, small odd sizes; every output and gradient against a dense re-implementation.
"""
import math

import pytest
import torch
from torch import nn

from flashts import nn as fnn
from flashts.nn import tslib

F64 = torch.float64
BE = "torch"


def close(a, b, tol=1e-10):
    err = (a.double() - b.double()).norm() / max(b.double().norm().item(), 1e-6)
    assert err <= tol, f"relative error {err:.3e} > {tol:.1e}"


def _leaves(*shapes):
    return [torch.randn(*s, dtype=F64, requires_grad=True) for s in shapes]


def _grads(out, leaves, g):
    return torch.autograd.grad(out, leaves, g)


# ------------------------------------------------------------------------------------- tau / delta

def _ds_dense(q, k, v, tau, delta, scale, allowed):
    """TSLib's DSAttention: softmax(scale·(q·k·tau + delta)) over the allowed keys, written densely."""
    B, L, H, E = q.shape
    scores = torch.einsum("blhe,bshe->bhls", q, k) * tau.view(B, 1, 1, 1) + delta.view(B, 1, 1, -1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhls,bshd->blhd", torch.softmax(scale * scores, dim=-1), v)


@pytest.mark.parametrize("mask_flag,window", [(True, (4, 0)), (False, (3, 2))])
def test_sliding_window_tau_delta_exact(mask_flag, window):
    B, L, H, E, D = 2, 11, 3, 5, 7
    q, k, v = _leaves((B, L, H, E), (B, L, H, E), (B, L, H, D))
    tau = (torch.rand(B, 1, dtype=F64) + 0.5).requires_grad_()
    delta = torch.randn(B, L, dtype=F64, requires_grad=True)
    inner = fnn.SlidingWindowInnerAttention(mask_flag, window=window, attention_dropout=0.0, backend=BE)
    out, _ = inner(q, k, v, None, tau=tau, delta=delta)
    i, j = torch.arange(L)[:, None], torch.arange(L)[None, :]
    allowed = (j >= i - window[0]) & (j <= i + window[1])
    ref = _ds_dense(q, k, v, tau, delta, E ** -0.5, allowed)
    close(out, ref)
    g = torch.randn_like(ref)
    for a, b in zip(_grads(out, [q, k, v, tau, delta], g), _grads(ref, [q, k, v, tau, delta], g)):
        close(a, b)
    # tau alone (delta None) and a scalar tau
    close(inner(q, k, v, None, tau=tau)[0], _ds_dense(q, k, v, tau, torch.zeros(B, L, dtype=F64), E ** -0.5, allowed))
    close(inner(q, k, v, None, tau=2.0)[0],
          _ds_dense(q, k, v, torch.full((B,), 2.0, dtype=F64), torch.zeros(B, L, dtype=F64), E ** -0.5, allowed))
    with pytest.raises(ValueError, match="delta"):
        inner(q, k, v, None, delta=torch.randn(B, L + 1, dtype=F64))


def test_aaren_tau_delta_exact():
    B, L, H, E, D = 2, 9, 2, 4, 3
    k, v = _leaves((B, L, H, E), (B, L, H, D))
    tau = (torch.rand(B, 1, dtype=F64) + 0.5).requires_grad_()
    delta = torch.randn(B, L, dtype=F64, requires_grad=True)
    inner = fnn.AarenInnerAttention(True, n_heads=H, d_keys=E, attention_dropout=0.0, backend=BE).double()
    out, _ = inner(torch.zeros(B, L, H, E, dtype=F64), k, v, None, tau=tau, delta=delta)
    q = inner.query.unsqueeze(0).unsqueeze(0).expand(B, L, H, E)
    allowed = torch.ones(L, L, dtype=torch.bool).tril()
    ref = _ds_dense(q, k, v, tau, delta, E ** -0.5, allowed)
    close(out, ref)
    g = torch.randn_like(ref)
    leaves = [k, v, tau, delta, inner.query]
    for a, b in zip(_grads(out, leaves, g), _grads(ref, leaves, g)):
        close(a, b)


@pytest.mark.parametrize("make", [
    lambda: fnn.LinearInnerAttention(False, backend=BE),
    lambda: fnn.LatteInnerAttention(False, backend=BE),
    lambda: fnn.AutoCorrelation(False, 1, backend=BE),
])
def test_tau_delta_rejected_where_inexact(make):
    q = torch.randn(2, 8, 2, 4)
    with pytest.raises(ValueError, match="tau/delta"):
        make()(q, q, q, None, tau=torch.ones(2, 1), delta=None)
    with pytest.raises(ValueError, match="tau/delta"):
        make()(q, q, q, None, tau=None, delta=torch.zeros(2, 8))


# ------------------------------------------------------------------------------------- Aaren's query

def _all_params_get_grad(layer, x):
    y, _ = layer(x, x, x, None)
    y.square().sum().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"parameters without gradient: {missing}"
    return y


def test_aaren_learned_query_leaves_query_projection_unused():
    """The documented limitation of query='learned' (why the other variants exist)."""
    layer = fnn.AttentionLayer(fnn.AarenInnerAttention(True, n_heads=2, d_keys=4, backend=BE), 8, 2).double()
    x = torch.randn(2, 7, 8, dtype=F64)
    layer(x, x, x, None)[0].sum().backward()
    assert layer.query_projection.weight.grad is None


@pytest.mark.parametrize("mask_flag,query", [(False, "mean"), (True, "first"), (False, "first")])
def test_aaren_query_from_projected_queries(mask_flag, query):
    B, L, H, E = 2, 7, 2, 4
    inner = fnn.AarenInnerAttention(mask_flag, query=query, attention_dropout=0.0, backend=BE)
    layer = fnn.AttentionLayer(inner, H * E, H).double()
    x = torch.randn(B, L, H * E, dtype=F64, requires_grad=True)
    y = _all_params_get_grad(layer, x)
    # the definition: Aaren with the query mean_t / first of the projected queries, causal or the last output
    qp = layer.query_projection(x).view(B, L, H, E)
    kp = layer.key_projection(x).view(B, L, H, E)
    vp = layer.value_projection(x).view(B, L, H, E)
    qa = qp.mean(1) if query == "mean" else qp[:, 0]
    s = torch.einsum("bhe,bshe->bhs", qa, kp) * E ** -0.5
    allowed = torch.ones(L, L, dtype=torch.bool).tril() if mask_flag else torch.ones(L, L, dtype=torch.bool)
    p = torch.softmax(s[:, :, None, :].expand(B, H, L, L).masked_fill(~allowed, float("-inf")), -1)
    ref = layer.out_projection(torch.einsum("bhls,bshd->blhd", p, vp).reshape(B, L, H * E))
    close(y, ref)
    if mask_flag:  # causal: a change at the last step leaves earlier outputs alone
        x2 = x.detach().clone()
        x2[:, -1] += 1.0
        close(layer(x2, x2, x2, None)[0][:, :-1], y[:, :-1])


def test_aaren_query_options_checked():
    with pytest.raises(ValueError, match="mean"):
        fnn.AarenInnerAttention(True, query="mean")
    with pytest.raises(ValueError, match="query"):
        fnn.AarenInnerAttention(False, query="max")
    with pytest.raises(ValueError, match="n_heads"):
        fnn.AarenInnerAttention(False, n_heads=2, d_keys=4, query="mean")
    assert fnn.AarenInnerAttention(True).query_source == "first"
    assert fnn.AarenInnerAttention(False).query_source == "mean"
    assert fnn.AarenInnerAttention(True, n_heads=2, d_keys=4).query_source == "learned"


# ------------------------------------------------------------------------------------- plain import

@pytest.mark.parametrize("cls", ["LinearInnerAttention", "SlidingWindowInnerAttention", "AarenInnerAttention",
                                 "LatteInnerAttention"])
@pytest.mark.parametrize("mask_flag", [True, False])
def test_plain_import_as_full_attention(cls, mask_flag):
    """`from flashts.nn import X as FullAttention`: FullAttention's constructor call (TSLib's models pass these)."""
    FullAttention = getattr(fnn, cls)
    inner = FullAttention(mask_flag, 5, attention_dropout=0.1, output_attention=False)
    layer = fnn.AttentionLayer(inner, 16, 4)
    x = torch.randn(2, 30, 16)
    y, attn = layer(x, x, x, None)
    assert y.shape == x.shape and attn is None and torch.isfinite(y).all()
    y.sum().backward()
    assert all(p.grad is not None for p in layer.parameters())
    FullAttention(mask_flag=True, factor=5, scale=None, attention_dropout=0.1, output_attention=False)


def test_sliding_window_default_from_module_constant(monkeypatch):
    assert fnn.SlidingWindowInnerAttention(True).window == (tslib.SLIDING_WINDOW_DEFAULT, 0)
    monkeypatch.setattr(tslib, "SLIDING_WINDOW_DEFAULT", 5)
    assert fnn.SlidingWindowInnerAttention(False).window == (5, 5)


@pytest.mark.parametrize("make,ok", [
    (lambda: fnn.LinearInnerAttention(False, backend=BE), True),
    (lambda: fnn.LatteInnerAttention(False, backend=BE), True),
    (lambda: fnn.AarenInnerAttention(False, backend=BE), True),
    (lambda: fnn.AutoCorrelation(False, 1, backend=BE), True),
    (lambda: fnn.SlidingWindowInnerAttention(False, window=(2, 2), backend=BE), False),
])
def test_cross_attention_support_as_documented(make, ok):
    q, kv = torch.randn(2, 9, 2, 4), torch.randn(2, 6, 2, 4)
    if ok:
        assert make()(q, kv, kv, None)[0].shape == (2, 9, 2, 4)
    else:
        with pytest.raises(ValueError, match="L=9, S=6"):
            make()(q, kv, kv, None)


# ------------------------------------------------------------------------------------- TSLib auto-correlation

class _TSLibAutoCorrelation(nn.Module):
    """The Time-Series-Library's layers/AutoCorrelation.py AutoCorrelation, re-written here from its published
    definition: irfft WITHOUT n (L − 1 lags at odd L), top_k = int(factor·ln L) over the full length L of the
    values, training: delays from the batch- and channel-mean correlation shared by the batch (torch.roll),
    inference: per-sample delays (gather on the values repeated twice)."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def agg_training(self, values, corr):
        head, channel, length = values.shape[1], values.shape[2], values.shape[3]
        top_k = int(self.factor * math.log(length))
        mean_value = torch.mean(torch.mean(corr, dim=1), dim=1)
        index = torch.topk(torch.mean(mean_value, dim=0), top_k, dim=-1)[1]
        weights = torch.stack([mean_value[:, index[i]] for i in range(top_k)], dim=-1)
        tmp_corr = torch.softmax(weights, dim=-1)
        delays_agg = torch.zeros_like(values)
        for i in range(top_k):
            pattern = torch.roll(values, -int(index[i]), -1)
            delays_agg = delays_agg + pattern * tmp_corr[:, i].view(-1, 1, 1, 1).repeat(1, head, channel, length)
        return delays_agg

    def agg_inference(self, values, corr):
        batch, head, channel, length = values.shape
        init_index = torch.arange(length).view(1, 1, 1, -1).repeat(batch, head, channel, 1)
        top_k = int(self.factor * math.log(length))
        mean_value = torch.mean(torch.mean(corr, dim=1), dim=1)
        weights, delay = torch.topk(mean_value, top_k, dim=-1)
        tmp_corr = torch.softmax(weights, dim=-1)
        tmp_values = values.repeat(1, 1, 1, 2)
        delays_agg = torch.zeros_like(values)
        for i in range(top_k):
            tmp_delay = init_index + delay[:, i].view(-1, 1, 1, 1).repeat(1, head, channel, length)
            pattern = torch.gather(tmp_values, dim=-1, index=tmp_delay)
            delays_agg = delays_agg + pattern * tmp_corr[:, i].view(-1, 1, 1, 1).repeat(1, head, channel, length)
        return delays_agg

    def forward(self, queries, keys, values, attn_mask):
        B, L, H, E = queries.shape
        _, S, _, D = values.shape
        if L > S:
            zeros = torch.zeros_like(queries[:, :(L - S), :])
            values = torch.cat([values, zeros], dim=1)
            keys = torch.cat([keys, zeros], dim=1)
        else:
            values, keys = values[:, :L, :, :], keys[:, :L, :, :]
        q_fft = torch.fft.rfft(queries.permute(0, 2, 3, 1).contiguous(), dim=-1)
        k_fft = torch.fft.rfft(keys.permute(0, 2, 3, 1).contiguous(), dim=-1)
        corr = torch.fft.irfft(q_fft * torch.conj(k_fft), dim=-1)
        agg = self.agg_training if self.training else self.agg_inference
        V = agg(values.permute(0, 2, 3, 1).contiguous(), corr).permute(0, 3, 1, 2)
        return V.contiguous(), corr.permute(0, 3, 1, 2)


@pytest.mark.parametrize("L,S", [(25, 25), (19, 12), (21, 30), (24, 24)])
@pytest.mark.parametrize("train", [True, False])
def test_tslib_autocorrelation_matches_tslib(L, S, train):
    B, H, E = 3, 2, 4
    q, k, v = _leaves((B, L, H, E), (B, S, H, E), (B, S, H, E))
    ours = fnn.TSLibAutoCorrelation(False, factor=1.5, output_attention=True, backend=BE).train(train)
    ref_mod = _TSLibAutoCorrelation(1.5).train(train)
    out, corr = ours(q, k, v, None)
    ref, ref_corr = ref_mod(q, k, v, None)
    close(out, ref)
    close(corr, ref_corr)
    g = torch.randn_like(ref)
    for a, b in zip(_grads(out, [q, k, v], g), _grads(ref, [q, k, v], g)):
        close(a, b)
    if L % 2 == 1:  # the Autoformer convention (irfft n=L) differs at odd L: the variant is needed
        other = fnn.AutoCorrelation(False, factor=1.5, backend=BE).train(train)(q, k, v, None)[0]
        assert (other - ref).abs().max() > 1e-6
    else:
        close(fnn.AutoCorrelation(False, factor=1.5, backend=BE).train(train)(q, k, v, None)[0], ref)


def test_autocorrelation_convention_checked():
    with pytest.raises(ValueError, match="convention"):
        fnn.AutoCorrelation(convention="thuml")
