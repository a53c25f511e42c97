"""Tests of sliding_window_attention (SPEC §2): every backend against flashts.reference, plus properties.

* Every window kind: (0,0), (1,0), (0,1), (3,2), causal (w−1,0), (−1,0), (0,−1), (−1,−1), one-sided
  unbounded mixes, windows larger than T; T in {1, 2, 17, 63, 100, 257}; float64 and float32 (outputs and
  gradients of q, k, v), a float16/bfloat16 smoke check.
* Blocking of the torch backend: its ``BLOCK_Q``/``BLOCK_K`` module constants are shrunk (fixture
  ``small_blocks``) so small T crosses many partial and edge blocks; different block sizes must agree; the
  number of scores it computes is bounded by O(T·(left+right+blocks)) (never T×T unless the window is).
* return_lse (values, dtype, gradient through lse alone and together with o), GQA/MQA, cu_seqlens with
  zero-length sequences (== the reference and == calling the op per sequence), logits of ±1e4 (finite,
  right; huge logits just outside the window must not leak in), scale given / None, odd head dims,
  non-contiguous inputs, and causal decoding token by token (last row of a window slice == full pass).
* Memory: a subprocess runs full attention at T=4096 and a (127, 0) window at T=16384 and checks the
  peak-RSS growth stays far below one T×T score matrix.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch

import flashts
from flashts import reference
from flashts.torch_ops import sliding_window as torch_impl
from helpers import TOL, backends_for, check_against_reference, device_for, rel_err

OP = "sliding_window_attention"
BACKENDS = backends_for(OP, interpreted=False)
# float64 exactness checks: the torch backend only (tests/test_sliding_window_triton.py covers them in float32)
TORCH_ONLY = ["torch"]
DTYPES = [torch.float64, torch.float32]
TS = [1, 2, 17, 63, 100, 257]
W = 8  # causal window of W keys: (W - 1, 0)
WINDOWS = [(0, 0), (1, 0), (0, 1), (3, 2), (W - 1, 0), (-1, 0), (0, -1), (-1, -1), (-1, 2), (5, -1),
           (300, 300), (1000, 0)]
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _qkv(B, T, H, Hk, D, Dv, dtype=torch.float64, device="cpu"):
    q = torch.randn(B, T, H, D, dtype=dtype, device=device)
    k = torch.randn(B, T, Hk, D, dtype=dtype, device=device)
    v = torch.randn(B, T, Hk, Dv, dtype=dtype, device=device)
    return q, k, v


@pytest.fixture
def small_blocks(monkeypatch):
    """Shrink the torch backend's blocks (sizes that divide nothing below) so small T crosses many blocks.
    BLOCK_Q > BLOCK_K, so the last rows of a query block see a fully masked first key block (running max
    still −inf there)."""
    monkeypatch.setattr(torch_impl, "BLOCK_Q", 7)
    monkeypatch.setattr(torch_impl, "BLOCK_K", 3)


def _grads(out, inputs, cotangents):
    loss = sum((o.double() * g).sum() for o, g in zip(out, cotangents))
    return torch.autograd.grad(loss, inputs)


# ----------------------------------------------------------------------------- against the reference

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_windows_vs_reference(backend, dtype, T, window):
    """Default blocks (T=257 is two full 128-row blocks plus a 1-row one); D=16, Dv=16, two batches."""
    q, k, v = _qkv(2, T, 2, 2, 16, 16)
    check_against_reference(OP, backend, (q, k, v), {"window": window}, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T", [17, 63, 100])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_windows_many_blocks(backend, dtype, T, window, small_blocks):
    """7-row / 3-key blocks: many partial and edge blocks, rows whose first key blocks are fully masked."""
    q, k, v = _qkv(1, T, 3, 3, 5, 7)
    check_against_reference(OP, backend, (q, k, v), {"window": window, "return_lse": True}, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("D,Dv", [(5, 7), (16, 16), (16, 3)])
@pytest.mark.parametrize("scale", [None, 0.37])
def test_dims_and_scale(backend, dtype, D, Dv, scale, small_blocks):
    q, k, v = _qkv(2, 23, 2, 2, D, Dv)
    check_against_reference(OP, backend, (q, k, v), {"window": (4, 1), "scale": scale, "return_lse": True},
                            dtype=dtype)


@pytest.mark.parametrize("backend", TORCH_ONLY)
def test_scale_none_is_rsqrt_d(backend):
    dev = device_for(backend)
    q, k, v = _qkv(1, 19, 2, 2, 5, 7, device=dev)
    a = flashts.sliding_window_attention(q, k, v, window=(3, 0), return_lse=True, backend=backend)
    b = flashts.sliding_window_attention(q, k, v, window=(3, 0), scale=5 ** -0.5, return_lse=True, backend=backend)
    c = flashts.sliding_window_attention(q, k, v, window=(3, 0), scale=1.0, return_lse=True, backend=backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert rel_err(a[0], c[0]) > 1e-3  # the scale is really applied


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision(backend, dtype):
    q, k, v = _qkv(1, 40, 2, 1, 16, 16)
    check_against_reference(OP, backend, (q, k, v), {"window": (9, 3), "return_lse": True}, dtype=dtype)


# ----------------------------------------------------------------------------- return_lse

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [(3, 2), (-1, 0), (-1, -1)], ids=str)
def test_lse_gradient_alone(backend, dtype, window, small_blocks):
    """Only lse gets a cotangent: o's cotangent is None (the autograd glue substitutes zeros)."""
    q, k, v = _qkv(1, 30, 4, 2, 5, 7)
    check_against_reference(OP, backend, (q, k, v), {"window": window, "return_lse": True}, dtype=dtype,
                            skip_grad_outputs=("[0]",))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=str)
def test_lse_dtype_and_shape(backend, dtype):
    dev = device_for(backend)
    q, k, v = _qkv(2, 11, 4, 2, 5, 7, dtype=dtype, device=dev)
    o, lse = flashts.sliding_window_attention(q, k, v, window=(2, 2), return_lse=True, backend=backend)
    assert o.shape == (2, 11, 4, 7) and o.dtype == dtype
    assert lse.shape == (2, 4, 11)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    o_only = flashts.sliding_window_attention(q, k, v, window=(2, 2), backend=backend)
    assert isinstance(o_only, torch.Tensor) and torch.equal(o_only, o)


# ----------------------------------------------------------------------------- exact properties

@pytest.mark.parametrize("backend", TORCH_ONLY)
def test_window_zero_is_own_value(backend, small_blocks):
    """(0, 0): each query sees only its own key: o_i = v_i (of its kv head), lse_i = scale·q_i·k_i."""
    dev = device_for(backend)
    q, k, v = _qkv(2, 17, 6, 2, 5, 7, device=dev)
    o, lse = flashts.sliding_window_attention(q, k, v, window=(0, 0), scale=0.5, return_lse=True,
                                              backend=backend)
    k_rep, v_rep = k.repeat_interleave(3, dim=2), v.repeat_interleave(3, dim=2)
    torch.testing.assert_close(o, v_rep, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, 0.5 * (q * k_rep).sum(-1).transpose(1, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", TORCH_ONLY)
def test_window_larger_than_t_is_full(backend, small_blocks):
    dev = device_for(backend)
    q, k, v = _qkv(1, 20, 2, 2, 5, 7, device=dev)
    full = flashts.sliding_window_attention(q, k, v, window=(-1, -1), return_lse=True, backend=backend)
    causal = flashts.sliding_window_attention(q, k, v, window=(-1, 0), return_lse=True, backend=backend)
    for big, ref in (((19, 19), full), ((500, 20), full), ((19, 0), causal), ((10**6, 0), causal)):
        got = flashts.sliding_window_attention(q, k, v, window=big, return_lse=True, backend=backend)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", TORCH_ONLY)
def test_block_sizes_agree(backend, monkeypatch):
    """Outputs and gradients do not depend on the torch backend's block sizes."""
    dev = device_for(backend)
    q, k, v = (x.requires_grad_() for x in _qkv(1, 45, 4, 2, 5, 7, device=dev))
    g = torch.randn(1, 45, 4, 7, dtype=torch.float64, device=dev)
    gl = torch.randn(1, 4, 45, dtype=torch.float64, device=dev)
    results = []
    for bq, bk in ((1, 1), (4, 9), (16, 3), (128, 256)):
        monkeypatch.setattr(torch_impl, "BLOCK_Q", bq)
        monkeypatch.setattr(torch_impl, "BLOCK_K", bk)
        o, lse = flashts.sliding_window_attention(q, k, v, window=(6, 2), return_lse=True, backend=backend)
        results.append((o, lse) + _grads((o, lse), (q, k, v), (g, gl)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("backend", TORCH_ONLY)
@pytest.mark.parametrize("w", [1, 3, 8])
def test_causal_decoding_token_by_token(backend, w):
    """Causal window (w−1, 0), one new token at a time: the last row of the op on the cached slice
    [t−w+1, t] (a KV cache of w tokens) equals row t of the whole-sequence call (outputs and lse)."""
    dev = device_for(backend)
    T = 17
    q, k, v = _qkv(1, T, 4, 2, 5, 7, device=dev)
    o_full, lse_full = flashts.sliding_window_attention(q, k, v, window=(w - 1, 0), return_lse=True,
                                                        backend=backend)
    for t in range(T):
        a = max(0, t - w + 1)
        o_s, lse_s = flashts.sliding_window_attention(q[:, a:t + 1], k[:, a:t + 1], v[:, a:t + 1],
                                                      window=(w - 1, 0), return_lse=True, backend=backend)
        torch.testing.assert_close(o_s[:, -1], o_full[:, t], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lse_s[:, :, -1], lse_full[:, :, t], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- GQA

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("H,Hk", [(4, 2), (6, 1), (6, 3)])
@pytest.mark.parametrize("window", [(2, 1), (W - 1, 0), (-1, -1)], ids=str)
def test_gqa(backend, dtype, H, Hk, window, small_blocks):
    q, k, v = _qkv(2, 21, H, Hk, 5, 7)
    check_against_reference(OP, backend, (q, k, v), {"window": window, "return_lse": True}, dtype=dtype)


@pytest.mark.parametrize("backend", TORCH_ONLY)
def test_gqa_equals_repeated_kv(backend, small_blocks):
    """GQA == MHA on K/V repeated per group (query head h reads kv head h // G); dk/dv summed over the group."""
    dev = device_for(backend)
    q, k, v = (x.requires_grad_() for x in _qkv(1, 26, 6, 2, 5, 7, device=dev))
    g = torch.randn(1, 26, 6, 7, dtype=torch.float64, device=dev)
    o = flashts.sliding_window_attention(q, k, v, window=(3, 4), backend=backend)
    dq, dk, dv = _grads((o,), (q, k, v), (g,))
    k_rep, v_rep = (x.detach().repeat_interleave(3, dim=2).requires_grad_() for x in (k, v))
    o_rep = flashts.sliding_window_attention(q, k_rep, v_rep, window=(3, 4), backend=backend)
    dq_r, dk_r, dv_r = _grads((o_rep,), (q, k_rep, v_rep), (g,))
    torch.testing.assert_close(o, o_rep, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dq, dq_r, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(dk, dk_r.view(1, 26, 2, 3, 5).sum(3), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(dv, dv_r.view(1, 26, 2, 3, 7).sum(3), rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------------------- packed sequences

CU_CASES = [[0, 5, 5, 22, 40], [0, 0, 17, 40], [0, 40, 40], [0, 1, 2, 3, 40]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cu", CU_CASES, ids=str)
@pytest.mark.parametrize("window", [(2, 1), (-1, 0), (-1, -1)], ids=str)
def test_cu_seqlens_vs_reference(backend, dtype, cu, window, small_blocks):
    q, k, v = _qkv(1, 40, 4, 2, 5, 7)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    check_against_reference(OP, backend, (q, k, v), {"window": window, "cu_seqlens": cu_t, "return_lse": True},
                            dtype=dtype)


@pytest.mark.parametrize("backend", TORCH_ONLY)
@pytest.mark.parametrize("cu", CU_CASES, ids=str)
@pytest.mark.parametrize("window", [(3, 0), (-1, -1)], ids=str)
def test_cu_seqlens_vs_per_sequence_calls(backend, cu, window, small_blocks):
    """Packed call == the op called on each sequence alone (outputs, lse and all gradients)."""
    dev = device_for(backend)
    T = cu[-1]
    q, k, v = (x.requires_grad_() for x in _qkv(1, T, 4, 2, 5, 7, device=dev))
    g = torch.randn(1, T, 4, 7, dtype=torch.float64, device=dev)
    gl = torch.randn(1, 4, T, dtype=torch.float64, device=dev)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=dev)
    o, lse = flashts.sliding_window_attention(q, k, v, window=window, cu_seqlens=cu_t, return_lse=True,
                                              backend=backend)
    packed = (o, lse) + _grads((o, lse), (q, k, v), (g, gl))
    outs, lses = [], []
    for a, b in zip(cu[:-1], cu[1:]):
        if b == a:
            continue  # T == 0 is not a valid standalone call; the packed call must simply skip it
        o_n, lse_n = flashts.sliding_window_attention(q[:, a:b], k[:, a:b], v[:, a:b], window=window,
                                                      return_lse=True, backend=backend)
        outs.append(o_n)
        lses.append(lse_n)
    o_s, lse_s = torch.cat(outs, dim=1), torch.cat(lses, dim=2)
    separate = (o_s, lse_s) + _grads((o_s, lse_s), (q, k, v), (g, gl))
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), packed, separate):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", TORCH_ONLY)
def test_cu_seqlens_no_leak(backend, small_blocks):
    """Changing one sequence's inputs leaves every other sequence's outputs bit-identical."""
    dev = device_for(backend)
    cu = torch.tensor([0, 9, 9, 20, 31], dtype=torch.int32, device=dev)
    q, k, v = _qkv(1, 31, 2, 2, 5, 7, device=dev)
    o1 = flashts.sliding_window_attention(q, k, v, window=(-1, -1), cu_seqlens=cu, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, 9:20] += 3.0
    v2[:, 9:20] -= 5.0
    o2 = flashts.sliding_window_attention(q, k2, v2, window=(-1, -1), cu_seqlens=cu, backend=backend)
    assert torch.equal(o1[:, :9], o2[:, :9]) and torch.equal(o1[:, 20:], o2[:, 20:])
    assert not torch.allclose(o1[:, 9:20], o2[:, 9:20])


# ----------------------------------------------------------------------------- extreme logits

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [(0, 0), (3, 2), (W - 1, 0), (-1, 0), (-1, -1)], ids=str)
def test_huge_logits(backend, dtype, window, small_blocks):
    """q·100, k·100 -> logits of order ±1e4: finite and right (outputs, lse and gradients).

    float32 scores of size 1e4 carry ~1e-3 absolute rounding, which moves a softmax weight by ~1e-3 relative
    when two logits happen to lie within a few units of each other; hence 1e-3 (not 1e-4) for float32."""
    q, k, v = _qkv(1, 33, 2, 1, 16, 7)
    tol = 1e-3 if dtype == torch.float32 else None
    check_against_reference(OP, backend, (q * 100, k * 100, v), {"window": window, "return_lse": True},
                            dtype=dtype, tol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_huge_logits_outside_window_do_not_leak(backend, dtype, small_blocks):
    """Keys just outside the window score +1e4 with every query, keys inside −1e4: masking must come before
    exp (no inf/NaN) and the result must be exactly the in-window softmax."""
    dev = device_for(backend)
    T, D = 24, 4
    u = torch.zeros(D, dtype=torch.float64)
    u[0] = 1.0
    q = (100.0 * u).expand(1, T, 1, D).clone()
    sign = torch.tensor([1.0 if (t // 3) % 2 else -1.0 for t in range(T)], dtype=torch.float64)
    k = (100.0 * sign[:, None] * u).view(1, T, 1, D).clone()  # alternating blocks of 3 keys: +1e4 / −1e4
    v = torch.randn(1, T, 1, 5, dtype=torch.float64)
    qd, kd, vd = (x.to(dev, dtype) for x in (q, k, v))
    for window in [(0, 0), (1, 0), (0, 1), (2, 2)]:
        o, lse = flashts.sliding_window_attention(qd, kd, vd, window=window, scale=1.0, return_lse=True,
                                                  backend=backend)
        assert torch.isfinite(o).all() and torch.isfinite(lse).all(), window
        o_ref, lse_ref = reference.sliding_window_attention(q, k, v, window=window, scale=1.0, return_lse=True)
        torch.testing.assert_close(o.double().cpu(), o_ref, rtol=TOL[dtype], atol=TOL[dtype])
        torch.testing.assert_close(lse.double().cpu(), lse_ref, rtol=TOL[dtype], atol=TOL[dtype] * 1e4)


# ----------------------------------------------------------------------------- layout, cost and memory

@pytest.mark.parametrize("backend", TORCH_ONLY)
def test_non_contiguous_inputs(backend, small_blocks):
    """Transposed / sliced views give the same results and gradients as contiguous copies."""
    dev = device_for(backend)
    base_q = torch.randn(2, 4, 19, 5, dtype=torch.float64, device=dev)  # [B, H, T, D] -> view as [B, T, H, D]
    base_k = torch.randn(2, 19, 2, 10, dtype=torch.float64, device=dev)
    base_v = torch.randn(2, 2, 19, 7, dtype=torch.float64, device=dev)
    q, k, v = base_q.transpose(1, 2), base_k[..., ::2], base_v.transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    q, k, v = (x.requires_grad_() for x in (q, k, v))  # non-leaf views are fine for autograd.grad
    g = torch.randn(2, 19, 4, 7, dtype=torch.float64, device=dev)
    o = flashts.sliding_window_attention(q, k, v, window=(2, 3), backend=backend)
    got = (o,) + _grads((o,), (q, k, v), (g,))
    qc, kc, vc = (x.detach().contiguous().requires_grad_() for x in (q, k, v))
    oc = flashts.sliding_window_attention(qc, kc, vc, window=(2, 3), backend=backend)
    want = (oc,) + _grads((oc,), (qc, kc, vc), (g,))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [(0, 0), (3, 2), (W - 1, 0), (40, 40), (-1, 0), (-1, -1)], ids=str)
def test_torch_backend_cost_is_windowed(window, monkeypatch):
    """The torch backend visits, per block of BLOCK_Q queries, only keys [i0 − left, i1 − 1 + right]: at most
    T·min(T, BLOCK_Q + left + right) scores per head and pass — O(T·window), never T×T for bounded windows."""
    block = 32
    monkeypatch.setattr(torch_impl, "BLOCK_Q", block)
    monkeypatch.setattr(torch_impl, "BLOCK_K", block)
    counted = []
    real_scores = torch_impl._scores

    def counting_scores(q_rows, k_blk, banned):
        s = real_scores(q_rows, k_blk, banned)
        counted.append(s.numel())
        return s

    monkeypatch.setattr(torch_impl, "_scores", counting_scores)
    T, H = 512, 2
    q, k, v = (x.requires_grad_() for x in _qkv(1, T, H, H, 4, 4))
    o = flashts.sliding_window_attention(q, k, v, window=window, backend="torch")
    o.sum().backward()
    left, right = (T if w < 0 else w for w in window)
    bound = 2 * H * T * min(T, block + left + right)  # forward + backward
    assert 0 < sum(counted) <= bound, (sum(counted), bound)
    if window[0] >= 0 and window[1] >= 0:
        assert sum(counted) < 2 * H * T * T / 4  # well below the dense count for these bounded windows


@pytest.mark.parametrize("backend", TORCH_ONLY)
def test_torch_compile_fullgraph(backend):
    """The custom op traces under torch.compile (aot_eager: no C++ toolchain) without a graph break, with
    GQA, cu_seqlens and return_lse; outputs and gradients equal eager mode."""
    dev = device_for(backend)
    q, k, v = (x.requires_grad_() for x in _qkv(1, 20, 4, 2, 5, 7, device=dev))
    cu = torch.tensor([0, 7, 7, 20], dtype=torch.int32, device=dev)

    def f(q, k, v):
        o, lse = flashts.sliding_window_attention(q, k, v, window=(3, 1), cu_seqlens=cu, return_lse=True,
                                                  backend=backend)
        return (o * o).sum() + lse.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = (compiled(q, k, v),) + torch.autograd.grad(compiled(q, k, v), (q, k, v))
    want = (f(q, k, v),) + torch.autograd.grad(f(q, k, v), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


_MEMORY_SCRIPT = textwrap.dedent("""
    import sys, torch, flashts

    torch.set_num_threads(1)  # measuring memory; one thread keeps a busy 2-core CI box from thrashing

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    H, D = 2, 16
    torch.manual_seed(0)
    small = [torch.randn(1, 64, H, D, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    flashts.sliding_window_attention(*small, window=(3, 0), backend="torch").sum().backward()  # warm-up
    for T, left, right in {cases}:
        q, k, v = (torch.randn(1, T, H, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
        g = torch.randn(1, T, H, D, dtype=torch.float64)
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
        before = status("VmRSS")
        o = flashts.sliding_window_attention(q, k, v, window=(left, right), backend="torch")
        o.backward(g)
        print(T, left, right, status("VmHWM") - before)
        del q, k, v, g, o
""")

# (T, left, right, limit in MiB). One float64 T×T score matrix per head: 2·128 MiB at T=4096 and 2·2 GiB at
# T=16384; inputs, outputs and gradients together are ~3 MiB and ~12 MiB.
_MEMORY_CASES = [(4096, -1, -1, 64), (16384, 127, 0, 96)]


def test_torch_backend_memory():
    """Peak-RSS growth of forward+backward (float64, B=1, H=2, D=16) stays far below one T×T matrix."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak RSS")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cases = [c[:3] for c in _MEMORY_CASES]
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT.format(cases=cases)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == len(_MEMORY_CASES), res.stdout
    for line, (T, left, right, limit) in zip(lines, _MEMORY_CASES):
        growth = int(line.split()[-1])
        assert growth < limit * 2**20, f"T={T} window=({left},{right}): peak RSS grew {growth / 2**20:.1f} MiB"
