"""Linear attention, ``triton`` backend (kernels/linear_attention.py) against ``flashts.reference``.

Runs on a GPU when there is one, otherwise under the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 and NaN-poisons every buffer the launchers allocate), so shapes are small. The chunk size is
lowered to 16 (the smallest tl.dot tile) in most tests so that T ≤ 100 spans several chunks, and BV_MAX to 16
where Dv must span several Dv tiles.

Covers: causal / non-causal × feature maps × normalize × scale × eps; float32, float16, bfloat16 (outputs and
all gradients); odd head dims (D=5, Dv=7; D=33; Dv=40 over three tiles; D=3, Dv=1); T ∈ {1, 2, 17, 63, 100};
the production chunk size; GQA (Hk = H/2 and 1); initial/final states and their gradients (any subset of
output cotangents); split/resume and T = 1 decoding (the dedicated decode kernel) equal to one pass;
cu_seqlens (empty and length-1 sequences, sequences across chunk boundaries, many sequences) against the
reference and against a loop over sequences; q, k ~ ±1e4; strided inputs; fresh output tensors and dtypes.
"""
from __future__ import annotations

import pytest
import torch

import flashts
from flashts.kernels import linear_attention as K
from helpers import backends_for, check_against_reference, device_for, rel_err

OP = "linear_attention"
BACKEND = "triton"
pytestmark = pytest.mark.skipif(BACKEND not in backends_for(OP),
                                reason="triton backend not available here (needs triton; CUDA or TRITON_INTERPRET=1)")
DEV = device_for(BACKEND)
F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
# self-consistency (same backend, different split of the same computation)
SELF_TOL = {F32: 2e-5, F16: 2e-3, BF16: 2e-2}


@pytest.fixture(params=["one_pass", "two_pass"])
def small_chunks(request, monkeypatch):
    """Chunks of 16 steps, so the short test sequences cross several chunk boundaries; both causal forward
    modes (FWD_MODE; a non-causal case runs the same kernels in both)."""
    monkeypatch.setattr(K, "CHUNK_SIZE", 16)
    monkeypatch.setattr(K, "FWD_MODE", request.param)
    return request.param


@pytest.fixture
def small_tiles(monkeypatch):
    """Dv tiles of 16 columns, so Dv > 16 spans several tiles (the cross-tile reductions of dq, dk and do·o)."""
    monkeypatch.setattr(K, "BV_MAX", 16)


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


# --------------------------------------------------------------------------- options and sizes


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map", ["elu", "relu", "identity"])
@pytest.mark.parametrize("normalize", [True, False])
def test_options(causal, feature_map, normalize, small_chunks):
    """Every option combination: GQA H=4/Hk=2, B=2, odd dims, two chunks, final state (+ initial when causal)."""
    B, T, H, Hk, D, Dv = 2, 19, 4, 2, 5, 7
    q, k, v = inputs(B, T, H, D, Dv, Hk, positive=feature_map == "identity" and normalize)
    kw = dict(causal=causal, feature_map=feature_map, normalize=normalize, output_final_state=True,
              scale=0.7 if feature_map == "relu" else None)
    if causal:
        kw["initial_state"] = state(B, H, D, Dv)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_eps(causal, eps):
    q, k, v = inputs(1, 23, 2, 6, 3)
    check_against_reference(OP, BACKEND, (q, k, v), dict(causal=causal, eps=eps), dtype=F32)


def test_eps_changes_the_result():
    q, k, v = (x.to(DEV) for x in inputs(1, 9, 2, 4, 3))
    a = flashts.linear_attention(q, k, v, eps=0.0, backend=BACKEND)
    b = flashts.linear_attention(q, k, v, eps=10.0, backend=BACKEND)
    assert rel_err(a, b) > 1e-2


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [1, 2, 17, 63, 100])
def test_lengths(causal, T, small_chunks):
    """T from one step (the decode kernel in the forward) to several chunks with a ragged last one."""
    q, k, v = inputs(1, T, 2, 5, 7)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(1, 2, 5, 7)
    elif T == 1:
        kw["eps"] = 0.5  # o = v·den/(den+eps) barely depends on q at T = 1 (see tests/test_linear.py)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D,Dv", [(16, 16), (33, 40), (3, 1)])
def test_head_dims(causal, D, Dv, small_chunks, small_tiles):
    """Head dims at, above and below the 16-wide tiles: D=33 pads to 64, Dv=40 spans three Dv tiles."""
    q, k, v = inputs(1, 37, 2, D, Dv, 1)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(1, 2, D, Dv)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


def test_default_blocking():
    """The production blocking: chunks of 64 over a ragged second chunk (D=8), and a wide head (D=130 → a
    256-wide tile, chunks cut to 16, Dv tiles of 32), normalised and not."""
    for normalize, (T, D, Dv) in ((True, (70, 8, 8)), (False, (70, 8, 8)), (True, (20, 130, 40))):
        cfg = K._Config(*inputs(1, T, 2, D, Dv), None, "elu")
        assert (cfg.C, cfg.BV) == ((K.FP32_CHUNK_SIZE, 16) if D == 8 else (16, 32))  # (float32 inputs)
        q, k, v = inputs(1, T, 2, D, Dv)
        kw = dict(normalize=normalize, output_final_state=True, initial_state=state(1, 2, D, Dv))
        check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("operands", ["float32", "input"])
def test_half_precision(dtype, causal, operands, small_chunks, monkeypatch):
    """float16/bfloat16 inputs, the chunk products on float32 operands or on operands rounded to the input dtype
    (HALF_DOT_OPERANDS; under the interpreter bfloat16 products stay float32, so "input" is checked here for
    float16 and on a GPU for both)."""
    monkeypatch.setattr(K, "HALF_DOT_OPERANDS", operands)
    q, k, v = inputs(1, 40, 2, 8, 8)
    kw = dict(causal=causal, output_final_state=True)
    if causal:
        kw["initial_state"] = state(1, 2, 8, 8)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=dtype)


# --------------------------------------------------------------------------- launch configurations

KINDS = ("fwd_causal", "chunk_state", "decode", "dstate", "causal_out", "apply", "norm", "grads")


def test_tune_sets():
    """Every launch kind has a small set of distinct configs per dtype class and head-dim tile (the default first;
    README "Register spills" lists their sm_90 compiles); only the gradient kernel splits."""
    for dtype in (F32, F16, BF16):
        for BK in (16, 64, 128, 256):
            for kind in KINDS:
                configs = K._tune_set(kind, BK, dtype)
                assert 1 <= len(configs) <= 4 and len(set(configs)) == len(configs), (kind, BK, dtype)
                assert len(configs) >= 2 or BK >= 256, (kind, BK, dtype)
                for c in configs:
                    assert c.BV in (16, 32, 64) and c.num_warps in (1, 2, 4, 8) and c.num_stages in (1, 2, 3)
                    assert kind == "grads" or not c.split
    assert K._tune_set("grads", 128, BF16)[0].split and not K._tune_set("grads", 64, BF16)[0].split
    assert K._tune_set("grads", 64, F32)[0].split


@pytest.mark.parametrize("dtype,D", [(F32, 24), (F32, 72), (BF16, 24), (BF16, 72)])
def test_every_tune_config(dtype, D, monkeypatch):
    """Every config of every launch set at both head-dim tiles (D=24 → BK 32, the ≤ 64 sets; D=72 → BK 128) runs
    once against the reference: config i of every kind at once (the last when a set is shorter), counting configs
    that differ only in warps or stages once (the interpreter ignores them; the sm_90 compile checks them). With
    1 SM assumed, the sequential kernels keep their configs' Dv tiles; Dv = 40 spans several tiles of 16 and 32.
    Per config: causal one pass (outputs, all gradients, states), two passes and non-causal (outputs), decode."""
    from flashts.kernels import occupancy
    monkeypatch.setattr(occupancy, "INTERPRETER_SMS", 1)
    B, T, H, Dv = 1, 35, 1, 40
    q, k, v = inputs(B, T, H, D, Dv)
    cfg = K._Config(q.to(dtype), k.to(dtype), v.to(dtype), None, "elu")
    distinct = {}
    for kind in KINDS:
        seq = kind in ("fwd_causal", "chunk_state", "decode", "dstate")
        seen = {}
        for t in K._tune_set(kind, cfg.BK, dtype):
            seen.setdefault((cfg.bv(t, seq), t.split), t)
        distinct[kind] = list(seen.values())
    rounds = max(len(c) for c in distinct.values())
    assert rounds >= 2  # the sets differ in what the interpreter sees (Dv tiles or split launches)
    for i in range(rounds):
        monkeypatch.setattr(K, "TILES", {kind: c[min(i, len(c) - 1)] for kind, c in distinct.items()})
        kw = dict(output_final_state=True, initial_state=state(B, H, D, Dv))
        monkeypatch.setattr(K, "FWD_MODE", "one_pass")
        check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=dtype)
        monkeypatch.setattr(K, "FWD_MODE", "two_pass")
        check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=dtype, grad=False)
        check_against_reference(OP, BACKEND, (q, k, v), dict(causal=False), dtype=dtype, grad=False)
        check_against_reference(OP, BACKEND, (q[:, :1], k[:, :1], v[:, :1]), kw, dtype=dtype, grad=False)


# --------------------------------------------------------------------------- GQA


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Hk", [2, 1])
def test_gqa(causal, Hk, small_chunks, small_tiles):
    """kv heads shared by 2 or 4 query heads (dk, dv group sums inside the kernel), Dv over two tiles: against
    the reference, and equal to the call with k, v repeated per query head."""
    B, T, H, D, Dv = 1, 20, 4, 5, 20
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


@pytest.mark.parametrize("cotangents", ["all", "no_o", "only_o", "only_z"])
def test_state_cotangents(cotangents, small_chunks):
    """Gradients of the initial state with cotangents on a subset of (o, S_T, z_T) (None cotangents reach the
    kernels as missing dS_T / dz_T)."""
    skip = {"all": (), "no_o": ("[0]",), "only_o": ("[1][0]", "[1][1]"), "only_z": ("[0]", "[1][0]")}[cotangents]
    B, T, H, Hk, D, Dv = 1, 21, 4, 2, 5, 3
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    kw = dict(initial_state=state(B, H, D, Dv), output_final_state=True)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32, skip_grad_outputs=skip)


def test_final_state_only_on_request():
    q, k, v = (x.to(DEV) for x in inputs(1, 8, 2, 4, 3))
    o = flashts.linear_attention(q, k, v, backend=BACKEND)
    assert isinstance(o, torch.Tensor) and o.shape == (1, 8, 2, 3) and o.dtype == q.dtype
    o2, (S, z) = flashts.linear_attention(q, k, v, output_final_state=True, backend=BACKEND)
    assert torch.equal(o, o2)
    assert S.shape == (1, 2, 4, 3) and z.shape == (1, 2, 4) and S.dtype == z.dtype == F32


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_split_resume(dtype, small_chunks):
    """The pieces [0:1], [1:20], [20:45] with the state carried equal one pass (outputs, states, gradients of
    q, k, v and the initial state)."""
    B, T, H, Hk, D, Dv = 1, 45, 2, 1, 5, 7
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    S0, z0 = state(B, H, D, Dv)
    leaves1 = [leaf(x, dtype) for x in (q, k, v)] + [leaf(x, F32) for x in (S0, z0)]
    leaves2 = [leaf(x, dtype) for x in (q, k, v)] + [leaf(x, F32) for x in (S0, z0)]
    kw = dict(output_final_state=True, backend=BACKEND)
    o1, (S1, z1) = flashts.linear_attention(*leaves1[:3], initial_state=tuple(leaves1[3:]), **kw)
    st, outs = tuple(leaves2[3:]), []
    for a, b in ((0, 1), (1, 20), (20, T)):
        o, st = flashts.linear_attention(*(x[:, a:b] for x in leaves2[:3]), initial_state=st, **kw)
        outs.append(o)
    o2, (S2, z2) = torch.cat(outs, 1), st
    for a, b, n in ((o2, o1, "o"), (S2, S1, "S_T"), (z2, z1, "z_T")):
        assert_close(a, b, dtype, n)
    cot = [torch.randn(x.shape, dtype=F64, device=DEV) for x in (o1, S1, z1)]
    for g2, g1, n in zip(grads_of((o2, S2, z2), cot, leaves2), grads_of((o1, S1, z1), cot, leaves1),
                         ("dq", "dk", "dv", "dS0", "dz0")):
        assert_close(g2, g1, dtype, n)


class _LaunchCounter:
    """Wraps a kernel so that ``kernel[grid](...)`` launches are counted."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("normalize", [True, False])
def test_decode_token_by_token(normalize, small_tiles, monkeypatch):
    """T == 1 steps from a state (the decode kernel; Dv over two tiles, GQA) reproduce the one-pass outputs,
    final state and gradients."""
    B, T, H, Hk, D, Dv = 1, 6, 2, 1, 5, 19
    decode = _LaunchCounter(K._decode_kernel)
    monkeypatch.setattr(K, "_decode_kernel", decode)
    q, k, v = inputs(B, T, H, D, Dv, Hk)
    S0, z0 = state(B, H, D, Dv)
    kw = dict(normalize=normalize, output_final_state=True, backend=BACKEND)
    leaves1 = [leaf(x, F32) for x in (q, k, v)] + [leaf(x, F32) for x in (S0, z0)]
    leaves2 = [leaf(x, F32) for x in (q, k, v)] + [leaf(x, F32) for x in (S0, z0)]
    o1, (S1, z1) = flashts.linear_attention(*leaves1[:3], initial_state=tuple(leaves1[3:]), **kw)
    assert decode.launches == 0
    st, outs = tuple(leaves2[3:]), []
    for t in range(T):
        o, st = flashts.linear_attention(*(x[:, t:t + 1] for x in leaves2[:3]), initial_state=st, **kw)
        outs.append(o)
    assert decode.launches == T
    o2, (S2, z2) = torch.cat(outs, 1), st
    for a, b, n in ((o2, o1, "o"), (S2, S1, "S_T"), (z2, z1, "z_T")):
        assert_close(a, b, F32, n)
    cot = [torch.randn(x.shape, dtype=F64, device=DEV) for x in (o1, S1, z1)]
    for g2, g1, n in zip(grads_of((o2, S2, z2), cot, leaves2), grads_of((o1, S1, z1), cot, leaves1),
                         ("dq", "dk", "dv", "dS0", "dz0")):
        assert_close(g2, g1, F32, n)


def test_decode_step_against_reference():
    """One decoding step (T == 1) with a state, B=2 and GQA, against the reference, outputs and gradients."""
    q, k, v = inputs(2, 1, 4, 6, 5, 2)
    kw = dict(initial_state=state(2, 4, 6, 5), output_final_state=True)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


# --------------------------------------------------------------------------- packed sequences

# with chunks of 16: an empty sequence, a length-1 one, one across a chunk boundary, one of exactly 16,
# one of 17 (a chunk and one step), sequences starting mid-chunk
CU = [0, 5, 5, 22, 23, 39, 56]
CU_MANY = [0, 0, 3, 3, 3, 20, 21, 37, 37, 40, 41]  # 10 sequences, leading and repeated empties


@pytest.mark.parametrize("causal,with_state,cu", [(True, True, CU), (True, False, CU), (False, False, CU),
                                                  (True, True, CU_MANY)], ids=["causal-state", "causal",
                                                                               "noncausal", "causal-many"])
def test_cu_seqlens_reference(causal, with_state, cu, small_chunks):
    H, Hk, D, Dv = 2, 1, 5, 7
    N, T = len(cu) - 1, cu[-1]
    q, k, v = inputs(1, T, H, D, Dv, Hk)
    kw = dict(causal=causal, output_final_state=True, cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=DEV))
    if with_state:
        kw["initial_state"] = state(N, H, D, Dv)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


@pytest.mark.parametrize("causal", [True, False])
def test_cu_seqlens_equals_loop(causal, small_chunks):
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
    if causal:
        assert torch.equal(g1[3][empty], cot[1][empty].to(F32))


# --------------------------------------------------------------------------- numerics, layout, contract


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map", ["elu", "relu"])
def test_large_inputs(causal, feature_map, small_chunks):
    """q, k ~ ±1e4: elu+1 is e^(-1e4) = 0 or x + 1 (no exp of a huge positive, not even masked out); finite
    and equal to the reference, outputs and gradients."""
    B, T, H, D, Dv = 1, 37, 2, 5, 4
    q, k, v = inputs(B, T, H, D, Dv, scale=1e4)
    kw = dict(causal=causal, feature_map=feature_map, output_final_state=True)
    if causal:
        kw["initial_state"] = (torch.randn(B, H, D, Dv) * 1e4, torch.rand(B, H, D) * 1e4)
    check_against_reference(OP, BACKEND, (q, k, v), kw, dtype=F32)


def test_strided_inputs(small_chunks):
    """Non-contiguous q, k, v (a [B, H, T, D] transpose, a last-dim stride of 2, a time-major tensor) give the
    contiguous result and gradients."""
    B, T, H, D, Dv = 2, 30, 2, 5, 3
    bases = [torch.randn(B, H, T, D, device=DEV), torch.randn(B, T, H, 2 * D, device=DEV),
             torch.randn(T, B, H, Dv, device=DEV)]
    strided = lambda q, k, v: (q.transpose(1, 2), k[..., ::2], v.transpose(0, 1))  # noqa: E731
    leaves1 = [x.clone().requires_grad_(True) for x in bases]
    leaves2 = [x.clone().requires_grad_(True) for x in bases]
    views = strided(*leaves1)
    assert not any(x.is_contiguous() for x in views)
    o1 = flashts.linear_attention(*views, backend=BACKEND)
    o2 = flashts.linear_attention(*(x.contiguous() for x in strided(*leaves2)), backend=BACKEND)
    assert_close(o1, o2, F32, "o")
    g = torch.randn(o1.shape, dtype=F64, device=DEV)
    for a, b, n in zip(grads_of([o1], [g], leaves1), grads_of([o2], [g], leaves2), ("dq", "dk", "dv")):
        assert_close(a, b, F32, n)


def test_backend_returns_new_tensors():
    """Outputs and gradients of the launchers never alias inputs (also for an empty sequence, whose final
    state equals its initial state) and have the documented dtypes (states float32; dS0/dz0 in the initial
    state's dtype; dq, dk, dv in the inputs' dtype)."""
    T, D, Dv = 3, 4, 4
    q, k, v = (torch.randn(1, T, 1, n, device=DEV, dtype=F16) for n in (D, D, Dv))
    S0, z0 = torch.randn(2, 1, D, Dv, device=DEV), torch.rand(2, 1, D, device=DEV)
    cu = torch.tensor([0, 0, T], dtype=torch.int32, device=DEV)
    o, S, z = K.linear_attention_fwd(q, k, v, S0, z0, cu, True, "identity", False, 1.0, 0.0)
    assert o.dtype == F16 and S.dtype == z.dtype == F32
    dS_T, dz_T = torch.randn_like(S0), torch.randn_like(z0)
    grads = K.linear_attention_bwd(torch.randn_like(o), dS_T, dz_T, q, k, v, o, S0, z0, cu, True, "identity",
                                   False, 1.0, 0.0)
    ins = [q, k, v, S0, z0, dS_T, dz_T, o]
    for out in (o, S, z) + tuple(grads):
        for x in ins:
            if out is not x:  # o is both an output and an input of the backward
                assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    assert torch.equal(S[0], S0[0]) and torch.equal(grads[3][0], dS_T[0]) and torch.equal(grads[4][0], dz_T[0])
    assert [g.dtype for g in grads] == [F16, F16, F16, F32, F32]
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape, S0.shape, z0.shape]
    none = K.linear_attention_bwd(torch.randn_like(o), None, None, q, k, v, o, None, None, None, True, "elu",
                                  True, 1.0, 1e-6)
    assert none[3] is None and none[4] is None
