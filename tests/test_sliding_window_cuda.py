"""Sliding-window attention, ``cuda`` backend (csrc/sliding_window.cu via flashts/cuda_ops/sliding_window.py).

Every test that runs a kernel is marked ``cuda_ext``: it skips (with the reason) on machines without a GPU or
without the compiled ``flashts._C``. tests/conftest.py NaN-poisons every output buffer the backend allocates,
so an element a kernel forgets to write fails the comparison.

The kernels pick their block size (64, 32 or 16 rows) from the device's shared memory; the lengths below
(up to 257, and 4096 against the torch backend) span several query and key blocks for every choice.

Covers: every window kind — (0,0), one-sided, two-sided, causal (w−1,0), (−1,0), (0,−1), (−1,−1), mixes of
bounded/unbounded sides, windows wider than T; T ∈ {1, 2, 17, 63, 100, 257}; float32 (FMA path), float16 and
bfloat16 (tensor cores), outputs, lse and all gradients (also through lse alone); head dims 1..256 (odd, at
and between the 16-wide tiles); D > 256 refused with a RuntimeError (checked without a GPU too); GQA/MQA and
equality with repeated K/V; cu_seqlens (zero-length and length-1 sequences) against the reference, against
per-sequence calls and without leaks; logits of ±1e4 inside and just outside the window; strided inputs;
a long sequence against the torch backend; determinism and fresh outputs.
"""
from __future__ import annotations

import pytest
import torch

import flashts
from flashts import _backend, reference
from helpers import TOL, check_against_reference, device_for, rel_err

OP = "sliding_window_attention"
BACKEND = "cuda"
DEV = device_for("cuda")  # the GPU; the CPU under FLASHTS_EMULATE_CUDA_EXT=1 (tests/conftest.py)
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
TS = [1, 2, 17, 63, 100, 257]
W = 8
WINDOWS = [(0, 0), (1, 0), (0, 1), (3, 2), (W - 1, 0), (-1, 0), (0, -1), (-1, -1), (-1, 2), (5, -1),
           (70, 70), (300, 300), (1000, 0)]

cuda_ext = pytest.mark.cuda_ext


def qkv(B, T, H, Hk, D, Dv, dtype=F32, device="cpu"):
    return (torch.randn(B, T, H, D, dtype=dtype, device=device), torch.randn(B, T, Hk, D, dtype=dtype, device=device),
            torch.randn(B, T, Hk, Dv, dtype=dtype, device=device))


def grads(out, inputs, cotangents):
    loss = sum((o.double() * g).sum() for o, g in zip(out, cotangents))
    return torch.autograd.grad(loss, inputs)


# --------------------------------------------------------------------------- without a GPU


def test_cuda_backend_is_registered():
    assert "cuda" in _backend.implemented(OP)
    assert _backend.module_for(OP, "cuda").__name__ == "flashts.cuda_ops.sliding_window"


@pytest.mark.parametrize("D,Dv", [(257, 16), (16, 300)])
def test_unsupported_head_dim_raises_runtime_error(D, Dv):
    """The module refuses head dims above MAX_HEAD_DIM with a RuntimeError, before touching the extension."""
    from flashts.cuda_ops import sliding_window as impl

    q, k, v = torch.randn(1, 4, 1, D), torch.randn(1, 4, 1, D), torch.randn(1, 4, 1, Dv)
    with pytest.raises(RuntimeError, match="head dims up to 256"):
        impl.sliding_window_attention_fwd(q, k, v, None, 2, 0, 1.0)
    with pytest.raises(RuntimeError, match="backend='triton' or backend='torch'"):
        impl.sliding_window_attention_bwd(torch.randn(1, 4, 1, Dv), None, q, k, v, torch.randn(1, 4, 1, Dv),
                                          torch.zeros(1, 1, 4), None, 2, 0, 1.0)


# --------------------------------------------------------------------------- against the reference


@cuda_ext
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_windows_vs_reference(T, window):
    """float32, D = Dv = 16, B = 2, GQA 4/2; outputs, lse and all gradients."""
    q, k, v = qkv(2, T, 4, 2, 16, 16)
    check_against_reference(OP, BACKEND, (q, k, v), {"window": window, "return_lse": True}, dtype=F32)


@cuda_ext
@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("T", [17, 100, 257])
@pytest.mark.parametrize("window", [(0, 0), (3, 2), (W - 1, 0), (-1, 0), (-1, -1), (70, 5)], ids=str)
def test_half_precision(dtype, T, window):
    """Tensor-core path (FA2 kernels: mma.sync fp16 / bf16, float32 accumulation)."""
    q, k, v = qkv(1, T, 4, 2, 64, 64)
    check_against_reference(OP, BACKEND, (q, k, v), {"window": window, "return_lse": True}, dtype=dtype)


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
@pytest.mark.parametrize("D,Dv", [(1, 1), (5, 7), (16, 16), (32, 32), (40, 24), (64, 64), (96, 96), (128, 128),
                                  (256, 256), (128, 16)])
def test_head_dims(dtype, D, Dv):
    q, k, v = qkv(1, 100, 2, 1, D, Dv)
    check_against_reference(OP, BACKEND, (q, k, v), {"window": (20, 7), "return_lse": True}, dtype=dtype)


@cuda_ext
@pytest.mark.parametrize("family", ["fa2", "fa2-64-row-forward", "generic"])
@pytest.mark.parametrize("D", [64, 128, 256])
def test_both_kernel_families(family, D, monkeypatch):
    """16-bit inputs (D <= 256) take the FlashAttention-2 kernels; FLASHTS_SWA_GENERIC=1 forces the generic ones,
    FLASHTS_SWA_FWD_ROWS=64 the 64-row forward blocks at D = 64. All against the reference (outputs, lse, every
    gradient)."""
    if family == "generic":
        monkeypatch.setenv("FLASHTS_SWA_GENERIC", "1")
    if family == "fa2-64-row-forward":
        monkeypatch.setenv("FLASHTS_SWA_FWD_ROWS", "64")
    q, k, v = qkv(2, 257, 4, 2, D, D)
    check_against_reference(OP, BACKEND, (q, k, v), {"window": (70, 5), "return_lse": True}, dtype=BF16)


@cuda_ext
def test_scale():
    q, k, v = qkv(1, 50, 2, 2, 8, 8)
    for scale in (None, 0.3, 2.0):
        check_against_reference(OP, BACKEND, (q, k, v), {"window": (5, 5), "scale": scale}, dtype=F32)


@cuda_ext
def test_head_dim_above_limit_raises():
    q, k, v = qkv(1, 8, 1, 1, 300, 16, device=DEV)
    with pytest.raises(RuntimeError, match="head dims up to 256"):
        flashts.sliding_window_attention(q, k, v, window=(2, 0), backend=BACKEND)


# --------------------------------------------------------------------------- lse


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("window", [(3, 2), (-1, 0), (-1, -1)], ids=str)
def test_lse_gradient_alone(dtype, window):
    """Only lse gets a cotangent (o's cotangent is None; the autograd glue substitutes zeros)."""
    q, k, v = qkv(1, 90, 4, 2, 5, 7)
    check_against_reference(OP, BACKEND, (q, k, v), {"window": window, "return_lse": True}, dtype=dtype,
                            skip_grad_outputs=("[0]",))


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_lse_dtype_and_shape(dtype):
    q, k, v = qkv(2, 11, 4, 2, 5, 7, dtype=dtype, device=DEV)
    o, lse = flashts.sliding_window_attention(q, k, v, window=(2, 2), return_lse=True, backend=BACKEND)
    assert o.shape == (2, 11, 4, 7) and o.dtype == dtype
    assert lse.shape == (2, 4, 11) and lse.dtype == F32
    o_only = flashts.sliding_window_attention(q, k, v, window=(2, 2), backend=BACKEND)
    assert isinstance(o_only, torch.Tensor) and torch.equal(o_only, o)


# --------------------------------------------------------------------------- exact properties


@cuda_ext
def test_window_zero_is_own_value():
    """(0, 0): o_i = v_i (of its kv head), lse_i = scale·q_i·k_i."""
    q, k, v = qkv(2, 77, 6, 2, 5, 7, device=DEV)
    o, lse = flashts.sliding_window_attention(q, k, v, window=(0, 0), scale=0.5, return_lse=True, backend=BACKEND)
    k_rep, v_rep = k.repeat_interleave(3, dim=2), v.repeat_interleave(3, dim=2)
    torch.testing.assert_close(o, v_rep, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse, 0.5 * (q * k_rep).sum(-1).transpose(1, 2), rtol=1e-5, atol=1e-5)


@cuda_ext
def test_window_larger_than_t_is_full():
    q, k, v = qkv(1, 70, 2, 2, 5, 7, device=DEV)
    full = flashts.sliding_window_attention(q, k, v, window=(-1, -1), return_lse=True, backend=BACKEND)
    causal = flashts.sliding_window_attention(q, k, v, window=(-1, 0), return_lse=True, backend=BACKEND)
    for big, ref in (((69, 69), full), ((500, 70), full), ((69, 0), causal), ((10**12, 0), causal)):
        got = flashts.sliding_window_attention(q, k, v, window=big, return_lse=True, backend=BACKEND)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@cuda_ext
@pytest.mark.parametrize("w", [1, 3, 8])
def test_causal_decoding_token_by_token(w):
    """Causal window (w−1, 0): the last row of the op on the cached slice [t−w+1, t] equals row t of the
    whole-sequence call (outputs and lse)."""
    T = 40
    q, k, v = qkv(1, T, 4, 2, 5, 7, device=DEV)
    o_full, lse_full = flashts.sliding_window_attention(q, k, v, window=(w - 1, 0), return_lse=True,
                                                        backend=BACKEND)
    for t in range(T):
        a = max(0, t - w + 1)
        o_s, lse_s = flashts.sliding_window_attention(q[:, a:t + 1], k[:, a:t + 1], v[:, a:t + 1],
                                                      window=(w - 1, 0), return_lse=True, backend=BACKEND)
        torch.testing.assert_close(o_s[:, -1], o_full[:, t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse_s[:, :, -1], lse_full[:, :, t], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- GQA


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, F16], ids=str)
@pytest.mark.parametrize("H,Hk", [(4, 2), (6, 1), (6, 3), (8, 8)])
@pytest.mark.parametrize("window", [(2, 1), (W - 1, 0), (-1, -1)], ids=str)
def test_gqa(dtype, H, Hk, window):
    q, k, v = qkv(2, 71, H, Hk, 5, 7)
    check_against_reference(OP, BACKEND, (q, k, v), {"window": window, "return_lse": True}, dtype=dtype)


@cuda_ext
def test_gqa_equals_repeated_kv():
    """GQA == MHA on K/V repeated per group; dk/dv are the group sums."""
    q, k, v = (x.requires_grad_() for x in qkv(1, 66, 6, 2, 5, 7, device=DEV))
    g = torch.randn(1, 66, 6, 7, dtype=F64, device=DEV)
    o = flashts.sliding_window_attention(q, k, v, window=(3, 4), backend=BACKEND)
    dq, dk, dv = grads((o,), (q, k, v), (g,))
    k_rep, v_rep = (x.detach().repeat_interleave(3, dim=2).requires_grad_() for x in (k, v))
    o_rep = flashts.sliding_window_attention(q, k_rep, v_rep, window=(3, 4), backend=BACKEND)
    dq_r, dk_r, dv_r = grads((o_rep,), (q, k_rep, v_rep), (g,))
    torch.testing.assert_close(o, o_rep, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dq, dq_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dk, dk_r.view(1, 66, 2, 3, 5).sum(3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dv, dv_r.view(1, 66, 2, 3, 7).sum(3), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- packed sequences

CU_CASES = [[0, 5, 5, 22, 140], [0, 0, 17, 140], [0, 140, 140], [0, 1, 2, 3, 140], [0, 64, 65, 97, 140]]


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("cu", CU_CASES, ids=str)
@pytest.mark.parametrize("window", [(2, 1), (-1, 0), (-1, -1), (40, 3)], ids=str)
def test_cu_seqlens_vs_reference(dtype, cu, window):
    q, k, v = qkv(1, 140, 4, 2, 5, 7)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    check_against_reference(OP, BACKEND, (q, k, v), {"window": window, "cu_seqlens": cu_t, "return_lse": True},
                            dtype=dtype)


@cuda_ext
@pytest.mark.parametrize("cu", CU_CASES, ids=str)
@pytest.mark.parametrize("window", [(3, 0), (-1, -1)], ids=str)
def test_cu_seqlens_vs_per_sequence_calls(cu, window):
    """Packed call == the op called on each sequence alone (outputs, lse and all gradients)."""
    T = cu[-1]
    q, k, v = (x.requires_grad_() for x in qkv(1, T, 4, 2, 5, 7, device=DEV))
    g = torch.randn(1, T, 4, 7, dtype=F64, device=DEV)
    gl = torch.randn(1, 4, T, dtype=F64, device=DEV)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEV)
    o, lse = flashts.sliding_window_attention(q, k, v, window=window, cu_seqlens=cu_t, return_lse=True,
                                              backend=BACKEND)
    packed = (o, lse) + grads((o, lse), (q, k, v), (g, gl))
    outs, lses = [], []
    for a, b in zip(cu[:-1], cu[1:]):
        if b == a:
            continue
        o_n, lse_n = flashts.sliding_window_attention(q[:, a:b], k[:, a:b], v[:, a:b], window=window,
                                                      return_lse=True, backend=BACKEND)
        outs.append(o_n)
        lses.append(lse_n)
    o_s, lse_s = torch.cat(outs, dim=1), torch.cat(lses, dim=2)
    separate = (o_s, lse_s) + grads((o_s, lse_s), (q, k, v), (g, gl))
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), packed, separate):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@cuda_ext
def test_cu_seqlens_no_leak():
    """Changing one sequence's inputs leaves every other sequence's outputs bit-identical."""
    cu = torch.tensor([0, 9, 9, 80, 131], dtype=torch.int32, device=DEV)
    q, k, v = qkv(1, 131, 2, 2, 5, 7, device=DEV)
    o1 = flashts.sliding_window_attention(q, k, v, window=(-1, -1), cu_seqlens=cu, backend=BACKEND)
    k2, v2 = k.clone(), v.clone()
    k2[:, 9:80] += 3.0
    v2[:, 9:80] -= 5.0
    o2 = flashts.sliding_window_attention(q, k2, v2, window=(-1, -1), cu_seqlens=cu, backend=BACKEND)
    assert torch.equal(o1[:, :9], o2[:, :9]) and torch.equal(o1[:, 80:], o2[:, 80:])
    assert not torch.allclose(o1[:, 9:80], o2[:, 9:80])


# --------------------------------------------------------------------------- extreme logits


@cuda_ext
@pytest.mark.parametrize("window", [(0, 0), (3, 2), (W - 1, 0), (-1, 0), (-1, -1)], ids=str)
def test_huge_logits(window):
    """q·100, k·100 -> logits of order ±1e4: finite and right (float32 scores of size 1e4 carry ~1e-3 absolute
    rounding, hence 1e-3 as in tests/test_sliding_window.py)."""
    q, k, v = qkv(1, 80, 2, 1, 16, 7)
    check_against_reference(OP, BACKEND, (q * 100, k * 100, v), {"window": window, "return_lse": True},
                            dtype=F32, tol=1e-3)


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_huge_logits_outside_window_do_not_leak(dtype):
    """Keys just outside the window score +1e4 with every query, keys inside −1e4: masking before exp."""
    T, D = 90, 4
    u = torch.zeros(D, dtype=F64)
    u[0] = 1.0
    q = (100.0 * u).expand(1, T, 1, D).clone()
    sign = torch.tensor([1.0 if (t // 3) % 2 else -1.0 for t in range(T)], dtype=F64)
    k = (100.0 * sign[:, None] * u).view(1, T, 1, D).clone()
    v = torch.randn(1, T, 1, 5, dtype=F64)
    qd, kd, vd = (x.to(DEV, dtype) for x in (q, k, v))
    for window in [(0, 0), (1, 0), (0, 1), (2, 2)]:
        o, lse = flashts.sliding_window_attention(qd, kd, vd, window=window, scale=1.0, return_lse=True,
                                                  backend=BACKEND)
        assert torch.isfinite(o).all() and torch.isfinite(lse).all(), window
        o_ref, lse_ref = reference.sliding_window_attention(q, k, v, window=window, scale=1.0, return_lse=True)
        tol = TOL[dtype]
        torch.testing.assert_close(o.double().cpu(), o_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(lse.double().cpu(), lse_ref, rtol=tol, atol=tol * 1e4)


# --------------------------------------------------------------------------- layout, long runs, plumbing


@cuda_ext
def test_non_contiguous_inputs():
    base_q = torch.randn(2, 4, 79, 5, device=DEV)  # [B, H, T, D] viewed as [B, T, H, D]
    base_k = torch.randn(2, 79, 2, 10, device=DEV)
    base_v = torch.randn(2, 2, 79, 7, device=DEV)
    q, k, v = base_q.transpose(1, 2), base_k[..., ::2], base_v.transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    check_against_reference(OP, BACKEND, (q, k, v), {"window": (2, 3), "return_lse": True}, dtype=F32)


@cuda_ext
@pytest.mark.parametrize("window", [(127, 0), (100, 100), (-1, 0)], ids=str)
def test_long_sequence_against_torch_backend(window):
    """T = 4096, D = Dv = 64, GQA 4/2: equal to the torch backend (float64) — outputs, lse, gradients."""
    q, k, v = qkv(1, 4096, 4, 2, 64, 64)
    leaves = [x.to(DEV).requires_grad_() for x in (q, k, v)]
    ref_leaves = [x.double().requires_grad_() for x in (q, k, v)]
    o, lse = flashts.sliding_window_attention(*leaves, window=window, return_lse=True, backend=BACKEND)
    ro, rlse = flashts.sliding_window_attention(*ref_leaves, window=window, return_lse=True, backend="torch")
    assert rel_err(o.cpu(), ro) < 1e-4 and rel_err(lse.cpu(), rlse) < 1e-5
    g, gl = torch.randn(o.shape, dtype=F64), torch.randn(lse.shape, dtype=F64)
    ga = grads((o, lse), leaves, (g.to(DEV), gl.to(DEV)))
    gb = grads((ro, rlse), ref_leaves, (g, gl))
    for a, b, n in zip(ga, gb, ("dq", "dk", "dv")):
        assert rel_err(a.cpu(), b) < 1e-4, n


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
def test_fresh_outputs_dtypes_and_determinism(dtype):
    """New tensors in the input dtypes; no atomics, so two runs are bitwise equal."""
    from flashts.cuda_ops import sliding_window as impl

    q, k, v = qkv(1, 150, 4, 2, 32, 32, dtype=dtype, device=DEV)
    o, lse = impl.sliding_window_attention_fwd(q, k, v, None, 9, 2, 0.2)
    o2, lse2 = impl.sliding_window_attention_fwd(q, k, v, None, 9, 2, 0.2)
    assert torch.equal(o, o2) and torch.equal(lse, lse2)
    assert o.dtype == dtype and lse.dtype == F32
    do, dlse = torch.randn_like(o), torch.randn_like(lse)
    g1 = impl.sliding_window_attention_bwd(do, dlse, q, k, v, o, lse, None, 9, 2, 0.2)
    g2 = impl.sliding_window_attention_bwd(do, dlse, q, k, v, o, lse, None, 9, 2, 0.2)
    for a, b, x in zip(g1, g2, (q, k, v)):
        assert a.shape == x.shape and a.dtype == x.dtype and a.data_ptr() != x.data_ptr()
        assert torch.equal(a, b)
