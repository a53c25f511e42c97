"""Linear attention, ``cuda`` backend (csrc/linear_attention.cu via flashts/cuda_ops/linear.py).

Every test that runs a kernel is marked ``cuda_ext``: it skips (with the reason) on machines without a GPU or
without the compiled ``flashts._C``. tests/conftest.py NaN-poisons every output buffer the backend allocates,
so an element a kernel forgets to write fails the comparison.

The kernels pick their chunk size (64, 32 or 16 steps) from the device's shared memory, so the lengths below
(T up to 257, packed sequences of 1..40 steps) cross chunk boundaries for every choice.

Every test runs twice, with the forward forced to the chunk-parallel mode and to the one-pass mode (fixture
fwd_mode). Covers: causal / non-causal × feature maps (elu, relu, identity) × normalize, scale and eps; float32, float16,
bfloat16 (outputs and all gradients); T ∈ {1, 2, 17, 63, 100, 257}; head dims from 1 to 128 (odd, at and
between the 16-wide tensor-core tiles); D > 128 refused with a RuntimeError (checked without a GPU too); GQA
(Hk = H, H/2, 1, and equal to repeating k, v); initial/final states and their gradients with any subset of
output cotangents; split/resume and T = 1 decoding equal to one pass; cu_seqlens (empty and length-1
sequences) against the reference and against a loop over sequences; inputs of ±1e4; strided inputs; a long
run against the torch backend; fresh outputs, dtypes, determinism.
"""
from __future__ import annotations

import pytest
import torch

import flashts
from flashts import _backend
from flashts import reference as ref
from helpers import check_against_reference, device_for, rel_err

OP = "linear_attention"
BACKEND = "cuda"
DEV = device_for("cuda")  # the GPU; the CPU under FLASHTS_EMULATE_CUDA_EXT=1 (tests/conftest.py)
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
# self-consistency of one backend (same math, different split of the work)
SELF_TOL = {F32: 2e-5, F16: 3e-3, BF16: 2e-2}

cuda_ext = pytest.mark.cuda_ext


@pytest.fixture(autouse=True, params=["chunked", "one_pass"])
def fwd_mode(request, monkeypatch):
    """Every test runs with both forward modes forced (the chunk-parallel three-phase forward and the one-pass
    kernel); "auto" picks between them by the occupancy rule (test_auto_mode_equals_both_modes)."""
    from flashts.cuda_ops import linear as impl

    monkeypatch.setattr(impl, "FWD_MODE", request.param)
    return request.param


def inputs(B, T, H, D, Dv, Hk=None, *, positive=False, scale=1.0):
    Hk = H if Hk is None else Hk
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, Dv)
    if positive:
        q, k = q.abs(), k.abs()
    return q * scale, k * scale, v


def state(N, H, D, Dv):
    return torch.randn(N, H, D, Dv), torch.rand(N, H, D) + 0.5


def leaf(x, dtype):
    return x.detach().to(device=DEV, dtype=dtype).clone().requires_grad_(True)


def grads_of(outputs, cotangents, leaves):
    loss = sum((o.double() * g).sum() for o, g in zip(outputs, cotangents))
    return torch.autograd.grad(loss, leaves, allow_unused=True)


def assert_close(x, ref, dtype, what):
    assert x.shape == ref.shape, f"{what}: shape {tuple(x.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(x).all(), f"{what}: non-finite values"
    e = rel_err(x, ref)
    assert e <= SELF_TOL[dtype], f"{what}: relative error {e:.3e} > {SELF_TOL[dtype]:.0e}"


# --------------------------------------------------------------------------- without a GPU


def test_cuda_backend_is_registered():
    assert "cuda" in _backend.implemented(OP)
    assert _backend.module_for(OP, "cuda").__name__ == "flashts.cuda_ops.linear"


@pytest.mark.parametrize("D,Dv", [(129, 16), (16, 129), (256, 256)])
def test_unsupported_head_dim_raises_runtime_error(D, Dv):
    """The module refuses head dims above MAX_HEAD_DIM with a RuntimeError naming the alternatives, before
    touching the extension (so it is checked on any machine)."""
    from flashts.cuda_ops import linear as impl

    q, k, v = torch.randn(1, 4, 1, D), torch.randn(1, 4, 1, D), torch.randn(1, 4, 1, Dv)
    with pytest.raises(RuntimeError, match="head dims up to 128"):
        impl.linear_attention_fwd(q, k, v, None, None, None, True, "elu", True, 1.0, 1e-6)
    with pytest.raises(RuntimeError, match="backend='triton' or backend='torch'"):
        impl.linear_attention_bwd(torch.randn(1, 4, 1, Dv), None, None, q, k, v, torch.randn(1, 4, 1, Dv), None,
                                  None, None, True, "elu", True, 1.0, 1e-6)


# --------------------------------------------------------------------------- options and sizes


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map", ["elu", "relu", "identity"])
@pytest.mark.parametrize("normalize", [True, False])
def test_options(causal, feature_map, normalize):
    """Every option: GQA H=4/Hk=2, B=2, odd dims, T=100 (several chunks, ragged last), final state (+ initial
    when causal), a non-default scale for relu."""
    B, T, H, Hk, D, Dv = 2, 100, 4, 2, 5, 7
    q, k, v = inputs(B, T, H, D, Dv, Hk, positive=feature_map == "identity" and normalize)
    kw = dict(causal=causal, feature_map=feature_map, normalize=normalize, output_final_state=True,
              scale=0.7 if feature_map == "relu" else None)
    if causal:
        kw["initial_state"] = state(B, H, D, Dv)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_eps(causal, eps):
    q, k, v = inputs(1, 23, 2, 6, 3)
    check_against_reference(OP, BACKEND, (q, k, v), dict(causal=causal, eps=eps), dtype=F32)


@cuda_ext
def test_eps_changes_the_result():
    q, k, v = (x.to(DEV) for x in inputs(1, 9, 2, 4, 3))
    a = flashts.linear_attention(q, k, v, eps=0.0, backend=BACKEND)
    b = flashts.linear_attention(q, k, v, eps=10.0, backend=BACKEND)
    assert rel_err(a, b) > 1e-2


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [1, 2, 17, 63, 100, 257])
def test_lengths(causal, T):
    q, k, v = inputs(1, T, 2, 5, 7)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(1, 2, 5, 7)
    elif T == 1:
        kw["eps"] = 0.5  # o = v·den/(den+eps) barely depends on q at T = 1 (see tests/test_linear.py)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D,Dv", [(1, 1), (3, 1), (16, 16), (17, 33), (32, 64), (64, 64), (96, 128), (128, 128),
                                  (128, 5)])
def test_head_dims(causal, D, Dv):
    """Head dims below, at and between the 16-wide tiles, up to the supported maximum 128 (float32, FMA path)."""
    q, k, v = inputs(1, 70, 2, D, Dv, 1, scale=D ** -0.25)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(1, 2, D, Dv)
    if D == 1:
        # φ(q_t) cancels between numerator and denominator when D = 1: dq comes only through eps (1e-6 by
        # default), a tiny difference of large terms that float32 cannot resolve; a large eps makes dq testable
        kw["eps"] = 0.5
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


@cuda_ext
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D,Dv", [(8, 8), (5, 7), (64, 64), (128, 128)])
def test_half_precision(dtype, causal, D, Dv):
    """float16 / bfloat16: the tensor-core (TF32) path, outputs and all gradients (input-dtype tolerance)."""
    q, k, v = inputs(1, 100, 2, D, Dv, scale=D ** -0.25)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(1, 2, D, Dv)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=dtype)


@cuda_ext
@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("feature_map", ["relu", "identity"])
def test_half_precision_unnormalized(dtype, feature_map):
    q, k, v = inputs(1, 63, 2, 16, 16, scale=0.5)
    kw = dict(feature_map=feature_map, normalize=False, output_final_state=True, initial_state=state(1, 2, 16, 16))
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=dtype)


@cuda_ext
def test_head_dim_above_limit_raises():
    q, k, v = (x.to(DEV) for x in inputs(1, 8, 1, 160, 16))
    with pytest.raises(RuntimeError, match="head dims up to 128"):
        flashts.linear_attention(q, k, v, backend=BACKEND)


# --------------------------------------------------------------------------- GQA


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Hk", [4, 2, 1])
def test_gqa(causal, Hk):
    """kv heads shared by 1, 2 or 4 query heads; also equal to the call with k, v repeated per query head."""
    B, T, H, D, Dv = 1, 70, 4, 5, 20
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(B, H, D, Dv)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)

    G = H // Hk
    ql, kl, vl = (leaf(x, F32) for x in (q, k, v))
    ql2, kr, vr = (leaf(x, F32) for x in (q, k.repeat_interleave(G, 2), v.repeat_interleave(G, 2)))
    kw2 = dict(kw, initial_state=tuple(s.to(DEV) for s in kw["initial_state"]) if causal else None)
    o1, (S1, z1) = flashts.linear_attention(ql, kl, vl, **kw2, backend=BACKEND)
    o2, (S2, z2) = flashts.linear_attention(ql2, kr, vr, **kw2, backend=BACKEND)
    for a, b, n in ((o1, o2, "o"), (S1, S2, "S_T"), (z1, z2, "z_T")):
        assert_close(a, b, F32, n)
    cot = [torch.randn(x.shape, dtype=F64, device=DEV) for x in (o1, S1, z1)]
    g1 = grads_of((o1, S1, z1), cot, (ql, kl, vl))
    g2 = grads_of((o2, S2, z2), cot, (ql2, kr, vr))
    assert_close(g1[0], g2[0], F32, "dq")
    assert_close(g1[1], g2[1].unflatten(2, (Hk, G)).sum(3), F32, "dk")
    assert_close(g1[2], g2[2].unflatten(2, (Hk, G)).sum(3), F32, "dv")


# --------------------------------------------------------------------------- states


@cuda_ext
@pytest.mark.parametrize("cotangents", ["all", "no_o", "only_o", "only_z"])
def test_state_cotangents(cotangents):
    """Gradients of the initial state with cotangents on a subset of (o, S_T, z_T)."""
    skip = {"all": (), "no_o": ("[0]",), "only_o": ("[1][0]", "[1][1]"), "only_z": ("[0]", "[1][0]")}[cotangents]
    B, T, H, Hk, D, Dv = 2, 41, 4, 2, 5, 3
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    kw = dict(initial_state=state(B, H, D, Dv), output_final_state=True)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32, skip_grad_outputs=skip)


@cuda_ext
def test_final_state_only_on_request():
    q, k, v = (x.to(DEV) for x in inputs(1, 8, 2, 4, 3))
    o = flashts.linear_attention(q, k, v, backend=BACKEND)
    assert isinstance(o, torch.Tensor) and o.shape == (1, 8, 2, 3) and o.dtype == q.dtype
    o2, (S, z) = flashts.linear_attention(q, k, v, output_final_state=True, backend=BACKEND)
    assert torch.equal(o, o2)
    assert S.shape == (1, 2, 4, 3) and z.shape == (1, 2, 4) and S.dtype == z.dtype == F32


@cuda_ext
@pytest.mark.parametrize("dtype", [F32, BF16])
def test_split_resume(dtype):
    """The pieces [0:1], [1:70], [70:150] with the state carried equal one pass (outputs, states, gradients of
    q, k, v and the initial state)."""
    B, T, H, Hk, D, Dv = 1, 150, 2, 1, 5, 7
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    S0, z0 = state(B, H, D, Dv)
    leaves1 = [leaf(x, dtype) for x in (q, k, v)] + [leaf(x, F32) for x in (S0, z0)]
    leaves2 = [leaf(x, dtype) for x in (q, k, v)] + [leaf(x, F32) for x in (S0, z0)]
    kw = dict(output_final_state=True, backend=BACKEND)
    o1, (S1, z1) = flashts.linear_attention(*leaves1[:3], initial_state=tuple(leaves1[3:]), **kw)
    st, outs = tuple(leaves2[3:]), []
    for a, b in ((0, 1), (1, 70), (70, T)):
        o, st = flashts.linear_attention(*(x[:, a:b] for x in leaves2[:3]), initial_state=st, **kw)
        outs.append(o)
    o2, (S2, z2) = torch.cat(outs, 1), st
    for a, b, n in ((o2, o1, "o"), (S2, S1, "S_T"), (z2, z1, "z_T")):
        assert_close(a, b, dtype, n)
    cot = [torch.randn(x.shape, dtype=F64, device=DEV) for x in (o1, S1, z1)]
    for g2, g1, n in zip(grads_of((o2, S2, z2), cot, leaves2), grads_of((o1, S1, z1), cot, leaves1),
                         ("dq", "dk", "dv", "dS0", "dz0")):
        assert_close(g2, g1, dtype, n)


@cuda_ext
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("feature_map", ["elu", "relu"])
def test_decode_token_by_token(normalize, feature_map):
    """T == 1 steps from a state (GQA, B=2) reproduce the one-pass outputs, final state and gradients."""
    B, T, H, Hk, D, Dv = 2, 6, 2, 1, 5, 19
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    S0, z0 = state(B, H, D, Dv)
    kw = dict(normalize=normalize, feature_map=feature_map, output_final_state=True, backend=BACKEND)
    leaves1 = [leaf(x, F32) for x in (q, k, v)] + [leaf(x, F32) for x in (S0, z0)]
    leaves2 = [leaf(x, F32) for x in (q, k, v)] + [leaf(x, F32) for x in (S0, z0)]
    o1, (S1, z1) = flashts.linear_attention(*leaves1[:3], initial_state=tuple(leaves1[3:]), **kw)
    st, outs = tuple(leaves2[3:]), []
    for t in range(T):
        o, st = flashts.linear_attention(*(x[:, t:t + 1] for x in leaves2[:3]), initial_state=st, **kw)
        outs.append(o)
    o2, (S2, z2) = torch.cat(outs, 1), st
    for a, b, n in ((o2, o1, "o"), (S2, S1, "S_T"), (z2, z1, "z_T")):
        assert_close(a, b, F32, n)
    cot = [torch.randn(x.shape, dtype=F64, device=DEV) for x in (o1, S1, z1)]
    for g2, g1, n in zip(grads_of((o2, S2, z2), cot, leaves2), grads_of((o1, S1, z1), cot, leaves1),
                         ("dq", "dk", "dv", "dS0", "dz0")):
        assert_close(g2, g1, F32, n)


@cuda_ext
def test_decode_step_against_reference():
    q, k, v = inputs(2, 1, 4, 6, 5, 2)
    kw = dict(initial_state=state(2, 4, 6, 5), output_final_state=True)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


# --------------------------------------------------------------------------- packed sequences

# an empty sequence, a length-1 one, sequences across the 16/32/64-step chunk boundaries, mid-chunk starts
CU = [0, 5, 5, 22, 23, 39, 56, 130]
CU_MANY = [0, 0, 3, 3, 3, 20, 21, 37, 37, 40, 41]  # 10 sequences, leading and repeated empties


@cuda_ext
@pytest.mark.parametrize("causal,with_state,cu", [(True, True, CU), (True, False, CU), (False, False, CU),
                                                  (True, True, CU_MANY)], ids=["causal-state", "causal",
                                                                               "noncausal", "causal-many"])
@pytest.mark.parametrize("dtype", [F32, F16])
def test_cu_seqlens_reference(causal, with_state, cu, dtype):
    H, Hk, D, Dv = 2, 1, 5, 7
    N, T = len(cu) - 1, cu[-1]
    q, k, v = inputs(1, T, H, D, Dv, Hk)
    kw = dict(causal=causal, output_final_state=True, cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=DEV))
    if with_state:
        kw["initial_state"] = state(N, H, D, Dv)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=dtype)


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
def test_cu_seqlens_equals_loop(causal):
    """Packed call == the op once per sequence (outputs, final states, all gradients); an empty sequence keeps
    its initial state and passes the final-state cotangent straight to dS_0."""
    H, Hk, D, Dv = 2, 1, 5, 7
    N, T = len(CU) - 1, CU[-1]
    q, k, v = inputs(1, T, H, D, Dv, Hk)
    S0, z0 = state(N, H, D, Dv)

    def make_leaves():
        states = [leaf(x, F32) for x in (S0, z0)] if causal else []
        return [leaf(x, F32) for x in (q, k, v)] + states

    leaves1, leaves2 = make_leaves(), make_leaves()
    kw = dict(causal=causal, output_final_state=True, backend=BACKEND)
    cu = torch.tensor(CU, dtype=torch.int32, device=DEV)
    o1, (S1, z1) = flashts.linear_attention(*leaves1[:3], initial_state=tuple(leaves1[3:]) or None,
                                            cu_seqlens=cu, **kw)
    outs, Ss, zs = [], [], []
    for n, (a, b) in enumerate(zip(CU[:-1], CU[1:])):
        st = (leaves2[3][n:n + 1], leaves2[4][n:n + 1]) if causal else None
        if a == b:
            S_n = st[0] if causal else torch.zeros(1, H, D, Dv, dtype=F32, device=DEV)
            z_n = st[1] if causal else torch.zeros(1, H, D, dtype=F32, device=DEV)
        else:
            o, (S_n, z_n) = flashts.linear_attention(*(x[:, a:b] for x in leaves2[:3]), initial_state=st, **kw)
            outs.append(o)
        Ss.append(S_n)
        zs.append(z_n)
    o2, S2, z2 = torch.cat(outs, 1), torch.cat(Ss), torch.cat(zs)
    for a, b, n in ((o1, o2, "o"), (S1, S2, "S_T"), (z1, z2, "z_T")):
        assert_close(a, b, F32, n)
    empty = CU.index(5)
    assert torch.equal(S1[empty], leaves1[3][empty] if causal else torch.zeros_like(S1[empty]))
    cot = [torch.randn(x.shape, dtype=F64, device=DEV) for x in (o1, S1, z1)]
    g1 = grads_of((o1, S1, z1), cot, leaves1)
    g2 = grads_of((o2, S2, z2), cot, leaves2)
    for a, b, n in zip(g1, g2, ("dq", "dk", "dv", "dS0", "dz0")):
        assert_close(a, b, F32, n)


# --------------------------------------------------------------------------- numerics and plumbing


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map", ["elu", "relu"])
def test_large_inputs(causal, feature_map):
    """q, k ~ ±1e4 (elu+1 only exponentiates values ≤ 0): finite and right, outputs and gradients."""
    q, k, v = inputs(1, 70, 2, 8, 8, scale=1e4)
    check_against_reference(OP, BACKEND, (q, k, v), dict(causal=causal, feature_map=feature_map), dtype=F32)


@cuda_ext
@pytest.mark.parametrize("dtype", [F16, BF16])
def test_large_inputs_half_forward_finite(dtype):
    """16-bit inputs of ±1e4: the products run in TF32 (float32 range), so nothing overflows."""
    q, k, v = (x.to(DEV, dtype) for x in inputs(1, 70, 2, 8, 8, scale=1e4))
    o = flashts.linear_attention(q, k, v, backend=BACKEND)
    assert torch.isfinite(o).all()
    ref = flashts.linear_attention(q.double().cpu(), k.double().cpu(), v.double().cpu(), backend="torch")
    assert rel_err(o.cpu(), ref) < 3e-2


@cuda_ext
def test_strided_inputs():
    """Non-contiguous q, k, v (permuted / sliced views) are read through their strides."""
    base_q = torch.randn(2, 4, 37, 6, device=DEV)  # [B, H, T, D] viewed as [B, T, H, D]
    base_k = torch.randn(2, 37, 2, 12, device=DEV)[..., ::2]
    base_v = torch.randn(2, 2, 37, 7, device=DEV)
    q, k, v = base_q.transpose(1, 2), base_k, base_v.transpose(1, 2)
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    for causal in (True, False):
        check_against_reference(OP, BACKEND, (q, k, v), dict(causal=causal), dtype=F32)


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
def test_long_sequence_against_torch_backend(causal):
    """T = 5000 (many chunks), D = Dv = 64, GQA: equal to the torch backend in float64."""
    q, k, v = inputs(1, 5000, 4, 64, 64, 2, scale=0.125)
    leaves = [leaf(x, F32) for x in (q, k, v)]
    ref_leaves = [x.detach().double().cpu().requires_grad_(True) for x in (q, k, v)]
    o, (S, z) = flashts.linear_attention(*leaves, causal=causal, output_final_state=True, backend=BACKEND)
    ro, (rS, rz) = flashts.linear_attention(*ref_leaves, causal=causal, output_final_state=True, backend="torch")
    for a, b, n in ((o, ro, "o"), (S, rS, "S_T"), (z, rz, "z_T")):
        assert rel_err(a.cpu(), b) < 1e-4, n
    g = torch.randn(o.shape, dtype=F64)
    ga = torch.autograd.grad((o.double() * g.to(DEV)).sum(), leaves)
    gb = torch.autograd.grad((ro * g).sum(), ref_leaves)
    for a, b, n in zip(ga, gb, ("dq", "dk", "dv")):
        assert rel_err(a.cpu(), b) < 1e-4, n


@cuda_ext
def test_fresh_outputs_dtypes_and_determinism():
    """Backend entry points return new tensors in the right dtypes; two runs are bitwise equal."""
    from flashts.cuda_ops import linear as impl

    q, k, v = (x.to(DEV) for x in inputs(1, 40, 4, 8, 6, 2))
    S0, z0 = (x.to(DEV) for x in state(1, 4, 8, 6))
    args = (q, k, v, S0, z0, None, True, "elu", True, 1.0, 1e-6)
    o, S, z = impl.linear_attention_fwd(*args)
    o2, S2, z2 = impl.linear_attention_fwd(*args)
    assert torch.equal(o, o2) and torch.equal(S, S2) and torch.equal(z, z2)
    assert o.dtype == q.dtype and S.dtype == z.dtype == F32
    for out in (o, S, z):
        for x in (q, k, v, S0, z0):
            assert out.data_ptr() != x.data_ptr()
    do, dS, dz = torch.randn_like(o), torch.randn_like(S), torch.randn_like(z)
    grads = impl.linear_attention_bwd(do, dS, dz, q, k, v, o, S0, z0, None, True, "elu", True, 1.0, 1e-6)
    grads2 = impl.linear_attention_bwd(do, dS, dz, q, k, v, o, S0, z0, None, True, "elu", True, 1.0, 1e-6)
    for g, g2, x in zip(grads, grads2, (q, k, v, S0, z0)):
        assert g.shape == x.shape and g.dtype == x.dtype
        assert torch.equal(g, g2)
    dq, dk, dv, dS0, dz0 = impl.linear_attention_bwd(do, None, None, q, k, v, o, None, None, None, True, "elu", True,
                                                     1.0, 1e-6)
    assert dS0 is None and dz0 is None


@cuda_ext
def test_half_gradients_in_input_dtype():
    q, k, v = (leaf(x, BF16) for x in inputs(1, 20, 2, 8, 8))
    flashts.linear_attention(q, k, v, backend=BACKEND).float().sum().backward()
    assert q.grad.dtype == k.grad.dtype == v.grad.dtype == BF16


@cuda_ext
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,T,H,D", [(1, 300, 2, 64), (64, 40, 8, 32), (2, 1000, 4, 128)])
def test_auto_mode_equals_both_modes(causal, B, T, H, D, fwd_mode, monkeypatch):
    """One-pass, chunk-parallel and "auto" forwards agree (float32) with each other and the reference, on
    shapes where the rule picks either mode (B·H = 512 ≥ 2·SMs picks one pass on a 132-SM GPU)."""
    from flashts.cuda_ops import linear as impl

    q, k, v = inputs(B, T, H, D, D, positive=True)
    S0, z0 = state(B, H, D, D)
    outs = {}
    for mode in ("one_pass", "chunked", "auto"):
        monkeypatch.setattr(impl, "FWD_MODE", mode)
        outs[mode] = impl.linear_attention_fwd(q.to(DEV), k.to(DEV), v.to(DEV), S0.to(DEV), z0.to(DEV), None,
                                               causal, "elu", True, 1.0, 1e-6)
    o_ref, (S_ref, z_ref) = ref.linear_attention(
        q.double(), k.double(), v.double(), causal=causal, initial_state=(S0.double(), z0.double()),
        output_final_state=True)
    for mode, (o, S, z) in outs.items():
        assert_close(o.cpu().double(), o_ref, F32, f"o ({mode})")
        assert_close(S.cpu().double(), S_ref, F32, f"S_T ({mode})")
        assert_close(z.cpu().double(), z_ref, F32, f"z_T ({mode})")
