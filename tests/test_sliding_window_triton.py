"""Tests of the ``triton`` backend of sliding_window_attention (SPEC §2) against flashts.reference.

Without a GPU the kernels run under the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
shapes are small. The kernels' tile sizes are shrunk with the ``blocks`` fixture (module constant
``BLOCKS`` = (program block, loop block)) so that T <= 100 crosses many query/key blocks, with program blocks
smaller, equal to and larger than loop blocks: rows whose first key blocks are fully masked, interior
(unmasked) blocks, ragged last blocks, window edges inside and across blocks.

Covered: every window kind ((0,0), one-sided, (w−1,0), (−1,0), (0,−1), (−1,−1), mixes, windows ≥ T), T in
{1, 2, 17, 63, 100}, head dims 1, 5/7, 16, 60/24 (non powers of two), 128/256; float32 (tolerance 1e-4,
outputs, lse and all gradients), float16 and bfloat16; return_lse with the lse cotangent alone and with o;
GQA/MQA (and == repeated K/V); cu_seqlens with zero-length sequences (== the reference, == calling the op per
sequence, no leak between sequences); logits of ±1e4 (and huge logits just outside the window); non-contiguous
inputs; causal decoding token by token; results independent of the tile sizes; and the cost bound: a NaN
planted in one key/value row reaches only the rows whose query blocks may visit it (so far-away key blocks are
never loaded: O(T·window), not O(T²)). Output buffers are NaN-poisoned (FLASHTS_POISON=1), so an element a
kernel forgets to write fails.
"""
from __future__ import annotations

import pytest
import torch

import flashts
from flashts import reference
from helpers import TOL, backends_for, check_against_reference, device_for, rel_err

OP = "sliding_window_attention"
BACKEND = "triton"
if BACKEND not in backends_for(OP):
    pytest.skip("triton backend unavailable here (needs triton, and a GPU or TRITON_INTERPRET=1)",
                allow_module_level=True)

from flashts.kernels import sliding_window_attention as kernels  # noqa: E402  (imports triton)

DEV = device_for(BACKEND)
F32 = torch.float32
WINDOWS = [(0, 0), (1, 0), (0, 1), (3, 2), (7, 0), (-1, 0), (0, -1), (-1, -1), (-1, 2), (5, -1), (300, 300),
           (98, 0), (20, 3)]


@pytest.fixture
def blocks(monkeypatch):
    """Set the kernels' tiles: ``blocks((16, 32))``."""
    def set_blocks(value):
        monkeypatch.setattr(kernels, "BLOCKS", value)
    return set_blocks


def _qkv(B, T, H, Hk, D, Dv, dtype=torch.float64, device="cpu"):
    q = torch.randn(B, T, H, D, dtype=dtype, device=device)
    k = torch.randn(B, T, Hk, D, dtype=dtype, device=device)
    v = torch.randn(B, T, Hk, Dv, dtype=dtype, device=device)
    return q, k, v


def _run(q, k, v, **kw):
    return flashts.sliding_window_attention(q, k, v, backend=BACKEND, **kw)


def _grads(out, inputs, cotangents):
    loss = sum((o.double() * g).sum() for o, g in zip(out, cotangents))
    return torch.autograd.grad(loss, inputs)


def _check(q, k, v, dtype=F32, **kwargs):
    return check_against_reference(OP, BACKEND, (q, k, v), kwargs, dtype=dtype)


# ----------------------------------------------------------------------------- windows × lengths × tiles

@pytest.mark.parametrize("tiles,T", [((16, 32), 100), ((32, 16), 63)], ids=["16x32-T100", "32x16-T63"])
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_windows_many_blocks(window, tiles, T, blocks):
    """Program block < / > loop block, T not a multiple of either; GQA 2:1, D=5, Dv=7 (padded to 16)."""
    blocks(tiles)
    _check(*_qkv(1, T, 2, 1, 5, 7), window=window, return_lse=True)


@pytest.mark.parametrize("T", [1, 2, 17])
@pytest.mark.parametrize("window", [(0, 0), (3, 2), (-1, 0), (-1, -1)], ids=str)
def test_short_sequences_default_tiles(T, window):
    _check(*_qkv(2, T, 2, 2, 16, 16), window=window, return_lse=True)


@pytest.mark.parametrize("D,Dv", [(1, 1), (5, 7), (16, 16), (60, 24), (16, 3)])
def test_head_dims(D, Dv, blocks):
    blocks((16, 16))
    _check(*_qkv(2, 37, 2, 1, D, Dv), window=(4, 9), return_lse=True)


def test_large_head_dims(blocks):
    blocks((16, 16))
    _check(*_qkv(1, 20, 2, 1, 128, 256), window=(3, 1), return_lse=True)


@pytest.mark.parametrize("scale", [None, 0.37])
def test_scale(scale, blocks):
    blocks((16, 16))
    _check(*_qkv(1, 33, 2, 2, 5, 7), window=(6, 2), scale=scale, return_lse=True)


def test_scale_none_is_rsqrt_d():
    q, k, v = _qkv(1, 19, 2, 2, 5, 7, dtype=F32, device=DEV)
    a = _run(q, k, v, window=(3, 0), return_lse=True)
    b = _run(q, k, v, window=(3, 0), scale=5 ** -0.5, return_lse=True)
    c = _run(q, k, v, window=(3, 0), scale=1.0, return_lse=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert rel_err(a[0], c[0]) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("window", [(9, 3), (-1, 0)], ids=str)
def test_half_precision(dtype, window, blocks):
    blocks((16, 16))
    _check(*_qkv(1, 40, 2, 1, 16, 16), dtype=dtype, window=window, return_lse=True)


# ----------------------------------------------------------------------------- return_lse

@pytest.mark.parametrize("window", [(3, 2), (-1, -1)], ids=str)
def test_lse_gradient_alone(window, blocks):
    """Only lse gets a cotangent (o's is None -> zeros): dS = P ⊙ dlse."""
    blocks((16, 16))
    q, k, v = _qkv(1, 29, 2, 1, 5, 7)
    check_against_reference(OP, BACKEND, (q, k, v), {"window": window, "return_lse": True}, dtype=F32,
                            skip_grad_outputs=("[0]",))


def test_lse_values_and_dtype():
    q, k, v = _qkv(2, 23, 4, 2, 5, 7)
    o, lse = _run(*(x.to(DEV, F32) for x in (q, k, v)), window=(2, 5), return_lse=True)
    assert lse.dtype == torch.float32 and lse.shape == (2, 4, 23)
    _, lse_ref = reference.sliding_window_attention(*(x.to(F32).double() for x in (q, k, v)), window=(2, 5),
                                                    return_lse=True)
    assert rel_err(lse.cpu(), lse_ref) < 1e-6


# ----------------------------------------------------------------------------- GQA

@pytest.mark.parametrize("H,Hk", [(4, 2), (6, 1), (3, 3)])
@pytest.mark.parametrize("window", [(2, 1), (-1, -1)], ids=str)
def test_gqa(H, Hk, window, blocks):
    blocks((16, 16))
    _check(*_qkv(1, 21, H, Hk, 5, 7), window=window, return_lse=True)


def test_gqa_equals_repeated_kv(blocks):
    """Query head h reads kv head h // G; dk/dv are the group sums."""
    blocks((16, 16))
    q, k, v = (x.requires_grad_() for x in _qkv(1, 26, 6, 2, 5, 7, dtype=F32, device=DEV))
    g = torch.randn(1, 26, 6, 7, dtype=torch.float64, device=DEV)
    o = _run(q, k, v, window=(3, 4))
    dq, dk, dv = _grads((o,), (q, k, v), (g,))
    k_rep, v_rep = (x.detach().repeat_interleave(3, dim=2).requires_grad_() for x in (k, v))
    o_rep = _run(q, k_rep, v_rep, window=(3, 4))
    dq_r, dk_r, dv_r = _grads((o_rep,), (q, k_rep, v_rep), (g,))
    torch.testing.assert_close(o, o_rep, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dq, dq_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dk, dk_r.view(1, 26, 2, 3, 5).sum(3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dv, dv_r.view(1, 26, 2, 3, 7).sum(3), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- packed sequences

CU_CASES = [[0, 5, 5, 22, 40], [0, 0, 17, 40], [0, 40, 40], [0, 1, 2, 3, 40]]


@pytest.mark.parametrize("cu", CU_CASES, ids=str)
@pytest.mark.parametrize("window", [(2, 1), (-1, 0)], ids=str)
def test_cu_seqlens_vs_reference(cu, window, blocks):
    blocks((16, 16))
    cu_t = torch.tensor(cu, dtype=torch.int32)
    _check(*_qkv(1, 40, 4, 2, 5, 7), window=window, cu_seqlens=cu_t, return_lse=True)


@pytest.mark.parametrize("cu,window", [([0, 5, 5, 22, 40], (3, 0)), ([0, 1, 2, 3, 40], (-1, -1))], ids=str)
def test_cu_seqlens_vs_per_sequence_calls(cu, window, blocks):
    """Packed call == the op called on each sequence alone (outputs, lse and all gradients)."""
    blocks((16, 16))
    T = cu[-1]
    q, k, v = (x.requires_grad_() for x in _qkv(1, T, 2, 1, 5, 7, dtype=F32, device=DEV))
    g = torch.randn(1, T, 2, 7, dtype=torch.float64, device=DEV)
    gl = torch.randn(1, 2, T, dtype=torch.float64, device=DEV)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEV)
    o, lse = _run(q, k, v, window=window, cu_seqlens=cu_t, return_lse=True)
    packed = (o, lse) + _grads((o, lse), (q, k, v), (g, gl))
    outs, lses = [], []
    for a, b in zip(cu[:-1], cu[1:]):
        if b > a:
            o_n, lse_n = _run(q[:, a:b], k[:, a:b], v[:, a:b], window=window, return_lse=True)
            outs.append(o_n)
            lses.append(lse_n)
    o_s, lse_s = torch.cat(outs, dim=1), torch.cat(lses, dim=2)
    separate = (o_s, lse_s) + _grads((o_s, lse_s), (q, k, v), (g, gl))
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), packed, separate):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_cu_seqlens_no_leak(blocks):
    """Changing one sequence's k/v leaves every other sequence's outputs bit-identical."""
    blocks((16, 16))
    cu = torch.tensor([0, 9, 9, 20, 31], dtype=torch.int32, device=DEV)
    q, k, v = _qkv(1, 31, 2, 2, 5, 7, dtype=F32, device=DEV)
    o1 = _run(q, k, v, window=(-1, -1), cu_seqlens=cu)
    k2, v2 = k.clone(), v.clone()
    k2[:, 9:20] += 3.0
    v2[:, 9:20] -= 5.0
    o2 = _run(q, k2, v2, window=(-1, -1), cu_seqlens=cu)
    assert torch.equal(o1[:, :9], o2[:, :9]) and torch.equal(o1[:, 20:], o2[:, 20:])
    assert not torch.allclose(o1[:, 9:20], o2[:, 9:20])


# ----------------------------------------------------------------------------- extreme logits

@pytest.mark.parametrize("window", [(0, 0), (3, 2), (-1, 0), (-1, -1)], ids=str)
def test_huge_logits(window, blocks):
    """q·100, k·100 -> logits ~±1e4: finite and right. float32 scores of size 1e4 carry ~1e-3 absolute
    rounding (in the reference's float64 product of the same float32 inputs too), hence 1e-3."""
    blocks((16, 16))
    q, k, v = _qkv(1, 33, 2, 1, 16, 7)
    check_against_reference(OP, BACKEND, (q * 100, k * 100, v), {"window": window, "return_lse": True},
                            dtype=F32, tol=1e-3)


def test_huge_logits_outside_window_do_not_leak(blocks):
    """Keys just outside the window score +1e4, keys inside −1e4: exactly the in-window softmax."""
    blocks((16, 16))
    T, D = 24, 4
    u = torch.zeros(D, dtype=torch.float64)
    u[0] = 1.0
    q = (100.0 * u).expand(1, T, 1, D).clone()
    sign = torch.tensor([1.0 if (t // 3) % 2 else -1.0 for t in range(T)], dtype=torch.float64)
    k = (100.0 * sign[:, None] * u).view(1, T, 1, D).clone()
    v = torch.randn(1, T, 1, 5, dtype=torch.float64)
    for window in [(0, 0), (1, 0), (0, 1), (2, 2)]:
        o, lse = _run(*(x.to(DEV, F32) for x in (q, k, v)), window=window, scale=1.0, return_lse=True)
        assert torch.isfinite(o).all() and torch.isfinite(lse).all(), window
        o_ref, lse_ref = reference.sliding_window_attention(q, k, v, window=window, scale=1.0, return_lse=True)
        torch.testing.assert_close(o.double().cpu(), o_ref, rtol=TOL[F32], atol=TOL[F32])
        torch.testing.assert_close(lse.double().cpu(), lse_ref, rtol=TOL[F32], atol=TOL[F32] * 1e4)


# ----------------------------------------------------------------------------- layout, tiles, decoding, cost

def test_non_contiguous_inputs(blocks):
    """Transposed / strided views (last dim strided too: copied by the launcher) == contiguous copies."""
    blocks((16, 16))
    base_q = torch.randn(2, 4, 19, 5, device=DEV)
    base_k = torch.randn(2, 19, 2, 10, device=DEV)
    base_v = torch.randn(2, 2, 19, 7, device=DEV)
    q, k, v = base_q.transpose(1, 2), base_k[..., ::2], base_v.transpose(1, 2)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    g = torch.randn(2, 19, 4, 7, device=DEV).transpose(0, 1).contiguous().transpose(0, 1)  # strided cotangent
    o = _run(q, k, v, window=(2, 3))
    got = (o,) + torch.autograd.grad(o, (q, k, v), g)
    qc, kc, vc = (x.detach().contiguous().requires_grad_() for x in (q, k, v))
    oc = _run(qc, kc, vc, window=(2, 3))
    want = (oc,) + torch.autograd.grad(oc, (qc, kc, vc), g.contiguous())
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_tile_sizes_agree(blocks):
    """Outputs and gradients do not depend on the tiles (up to float32 summation order)."""
    q, k, v = (x.requires_grad_() for x in _qkv(1, 45, 2, 1, 5, 7, dtype=F32, device=DEV))
    g = torch.randn(1, 45, 2, 7, dtype=torch.float64, device=DEV)
    gl = torch.randn(1, 2, 45, dtype=torch.float64, device=DEV)
    results = []
    for tiles in ((16, 16), (16, 64), (64, 16), None):
        blocks(tiles)
        o, lse = _run(q, k, v, window=(6, 2), return_lse=True)
        results.append((o, lse) + _grads((o, lse), (q, k, v), (g, gl)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


def test_causal_decoding_token_by_token():
    """Causal window (w−1, 0): the last row of the op on the cached slice [t−w+1, t] == row t of the full
    call (T == 1 calls included)."""
    w, T = 3, 10
    q, k, v = _qkv(1, T, 4, 2, 5, 7, dtype=F32, device=DEV)
    o_full, lse_full = _run(q, k, v, window=(w - 1, 0), return_lse=True)
    for t in range(T):
        a = max(0, t - w + 1)
        o_s, lse_s = _run(q[:, a:t + 1], k[:, a:t + 1], v[:, a:t + 1], window=(w - 1, 0), return_lse=True)
        torch.testing.assert_close(o_s[:, -1], o_full[:, t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(lse_s[:, :, -1], lse_full[:, :, t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [(0, 0), (3, 2), (7, 0), (0, 5)], ids=str)
def test_far_key_blocks_are_never_visited(window, blocks):
    """Cost O(T·window): a NaN planted in key/value row c reaches (through 0·NaN in the products of a visited
    block) only rows whose 16-row block may visit c's 16-key block; every row farther away stays finite, in o,
    dq (NaN in v), and dk/dv (NaN in the cotangent of o at row c)."""
    blocks((16, 16))
    T, c, B = 128, 70, 16
    left, right = window
    reach_before = right + 2 * B  # query rows below c − reach_before never visit key c's block
    reach_after = left + 2 * B
    q, k, v = _qkv(1, T, 1, 1, 16, 16, dtype=F32, device=DEV)
    v[:, c] = float("nan")
    q.requires_grad_()
    o = _run(q, k, v, window=window)
    far = torch.ones(T, dtype=torch.bool)
    far[max(0, c - reach_before):c + reach_after + 1] = False
    assert torch.isfinite(o[0, far]).all(), "forward visited a key block outside the window's reach"
    assert torch.isnan(o[0, c]).any()  # the planted NaN really is read where it should be
    (dq,) = torch.autograd.grad(o, (q,), torch.ones_like(o))
    assert torch.isfinite(dq[0, far]).all(), "dq kernel visited a key block outside the window's reach"
    # dk/dv: NaN in the cotangent of query row c reaches keys within the reach of c's query block only
    q, k, v = (x.requires_grad_() for x in _qkv(1, T, 1, 1, 16, 16, dtype=F32, device=DEV))
    o = _run(q, k, v, window=window)
    g = torch.ones_like(o)
    g[:, c] = float("nan")
    dk, dv = torch.autograd.grad(o, (k, v), g)
    far_k = torch.ones(T, dtype=torch.bool)
    far_k[max(0, c - reach_after):c + reach_before + 1] = False
    assert torch.isfinite(dk[0, far_k]).all() and torch.isfinite(dv[0, far_k]).all(), \
        "dk/dv kernel visited a query block outside the window's reach"
    assert torch.isnan(dv[0, c]).any()


def test_float64_is_rejected():
    """Kernel backends take float32/float16/bfloat16 only (float64 is the torch backend's)."""
    q, k, v = _qkv(1, 8, 1, 1, 4, 4, device=DEV)
    with pytest.raises(TypeError, match="float64"):
        _run(q, k, v, window=(1, 1))


def test_out_of_resources_falls_back_to_smaller_tiles(monkeypatch):
    """A launch that runs out of shared memory is retried with fewer stages, then smaller tiles, and the
    working tiles are remembered for that key."""
    monkeypatch.setattr(kernels, "_FALLBACK", {})
    tried = []

    def launch(t):
        tried.append((t.a, t.b, t.num_stages))
        if t.num_stages > 1 or t.b > 32:
            raise kernels._OutOfResources(300000, 232448, "shared memory")

    kernels._launch(("test",), kernels._Tiles(128, 64, 8, 3), launch)
    assert tried == [(128, 64, 3), (128, 64, 2), (128, 64, 1), (128, 32, 2), (128, 32, 1)]
    tried.clear()
    kernels._launch(("test",), kernels._Tiles(128, 64, 8, 3), launch)
    assert tried == [(128, 32, 1)]


def test_torch_compile_fullgraph(blocks):
    """The custom op traces under torch.compile (aot_eager) without a graph break, with GQA, cu_seqlens and
    return_lse; outputs and gradients equal eager mode."""
    blocks((16, 16))
    q, k, v = (x.requires_grad_() for x in _qkv(1, 20, 4, 2, 5, 7, dtype=F32, device=DEV))
    cu = torch.tensor([0, 7, 7, 20], dtype=torch.int32, device=DEV)

    def f(q, k, v):
        o, lse = _run(q, k, v, window=(3, 1), cu_seqlens=cu, return_lse=True)
        return (o * o).sum() + lse.sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = (compiled(q, k, v),) + torch.autograd.grad(compiled(q, k, v), (q, k, v))
    want = (f(q, k, v),) + torch.autograd.grad(f(q, k, v), (q, k, v))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
