"""ProbSparse attention (Informer, SPEC §6) against flashts.reference, and the ProbAttention drop-in against a
faithful re-implementation of the original algorithm (bench/informer_original.py).

Covered (torch backend here; tests/test_prob_sparse_triton.py runs the same checks on the Triton kernels):
outputs and q/k/v gradients vs the float64 reference in float64/32/16/bf16 with the key blocks shrunk to 16
(many blocks, ragged last block); L = 1, 2, 17, 63, 100; L_Q != L_K (non-causal); causal; GQA; every query
active (u = L_Q) and L_K = 1 (U = 0); the returned indices; sample_index drawn from the global seed or a
generator exactly as the original draws it; ±1e4 logits; non-contiguous inputs; argument errors; autocast;
torch.compile (aot_eager and inductor, forward and backward). The drop-in: same outputs, attention maps and
parameter gradients as the original inside its AttentionLayer and a small Informer-style encoder/decoder, for
one global seed; B = 1 and H = 1 (where the original's ``.squeeze()`` fails).
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import flashts
from flashts import reference
from flashts._validate import prob_sparse_sizes
from helpers import TOL, backends_for, check_against_reference, rel_err

OP = "prob_sparse_attention"
ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKENDS = backends_for(OP, interpreted=False)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def _original():
    spec = importlib.util.spec_from_file_location("informer_original", ROOT / "bench" / "informer_original.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    import flashts.torch_ops.prob_sparse as tp
    monkeypatch.setattr(tp, "BLOCK_K", 16)
    monkeypatch.setattr(tp, "SAMPLE_BUDGET", 64)


def qkv(B, LQ, LK, H, Hk, D, Dv, dtype=torch.float64, scale=1.0):
    return (torch.randn(B, LQ, H, D, dtype=dtype) * scale, torch.randn(B, LK, Hk, D, dtype=dtype) * scale,
            torch.randn(B, LK, Hk, Dv, dtype=dtype))


def index_for(LQ, LK, factor=5):
    U, _ = prob_sparse_sizes(LQ, LK, factor)
    return torch.randint(LK, (LQ, U))


# (B, L_Q, L_K, H, Hk, D, Dv, causal, factor)
CASES = {
    "L1": (2, 1, 1, 2, 2, 4, 4, True, 5),
    "L2": (1, 2, 2, 2, 1, 8, 3, False, 1),
    "L17-causal": (2, 17, 17, 2, 2, 5, 7, True, 5),
    "L63-causal-gqa": (1, 63, 63, 4, 2, 16, 16, True, 2),
    "L100-causal": (2, 100, 100, 2, 2, 8, 8, True, 5),
    "L100-noncausal-mqa": (1, 100, 100, 3, 1, 8, 5, False, 3),
    "LQ17-LK100": (2, 17, 100, 2, 2, 6, 6, False, 5),
    "LQ100-LK63": (1, 100, 63, 2, 1, 4, 9, False, 2),
    "LK1": (1, 9, 1, 2, 2, 4, 4, False, 5),
    "all-active": (2, 12, 12, 2, 2, 4, 4, True, 5),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_against_reference(case, dtype, backend):
    B, LQ, LK, H, Hk, D, Dv, causal, factor = CASES[case]
    errs = check_against_reference(OP, backend, qkv(B, LQ, LK, H, Hk, D, Dv),
                                   dict(factor=factor, causal=causal, sample_index=index_for(LQ, LK, factor),
                                        return_index=True), dtype=dtype)
    assert errs["out[0]"] <= TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_inactive_rows_and_index(backend):
    """Independent of the reference: u sorted distinct indices; inactive rows = mean (non-causal) / cumsum of v."""
    q, k, v = qkv(2, 40, 40, 3, 3, 8, 6, dtype=torch.float32)
    for causal in (False, True):
        o, idx = flashts.prob_sparse_attention(q, k, v, causal=causal, return_index=True, backend=backend)
        U, u = prob_sparse_sizes(40, 40, 5)
        assert idx.shape == (2, 3, u) and idx.dtype == torch.int64 and u == 20
        assert (idx.diff(dim=-1) > 0).all()
        lazy = v.cumsum(1) if causal else v.mean(1, keepdim=True).expand_as(v)
        active = torch.zeros(2, 3, 40, dtype=torch.bool).scatter_(2, idx, True).transpose(1, 2)
        torch.testing.assert_close(o[~active], lazy[~active], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(o[active], lazy[active], atol=1e-3)


def huge_logits_check(backend, dtype, device="cpu"):
    """q·100, k·100 -> logits of order ±1e4: outputs finite and right; gradients finite, dv right, dq and dk
    right up to the rounding of float32 scores of size 1e4 (~1e-3 absolute, which moves a near-one-hot softmax
    by ~1e-3 relative, hence 3e-3 for dv; the exact dq, dk are ~e^-100 here, so they are compared in absolute
    terms)."""
    q, k, v = qkv(1, 33, 33, 2, 1, 16, 8)
    q, k = q * 100, k * 100
    tol = 1e-3 if dtype == torch.float32 else TOL[dtype]
    for causal in (False, True):
        kw = dict(causal=causal, sample_index=index_for(33, 33))
        xs = [x.to(device, dtype).requires_grad_() for x in (q, k, v)]
        refs = [x.to(dtype).double().requires_grad_() for x in (q, k, v)]
        g = torch.randn(1, 33, 2, 8, dtype=torch.float64)
        out = flashts.prob_sparse_attention(*xs, **kw, backend=backend).double().cpu()
        ref_out = reference.prob_sparse_attention(*refs, **kw)
        assert torch.isfinite(out).all() and rel_err(out, ref_out) <= tol
        mine = torch.autograd.grad((out * g).sum(), xs)
        ref = torch.autograd.grad((ref_out * g).sum(), refs)
        assert all(torch.isfinite(m).all() for m in mine)
        assert rel_err(mine[2].cpu(), ref[2]) <= 3 * tol
        for m, r in zip(mine[:2], ref[:2]):
            assert (m.cpu().double() - r).abs().max() <= 1e-2 * 100 * g.abs().max()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_huge_logits(backend, dtype):
    huge_logits_check(backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_and_generator_draw_like_the_original(backend):
    q, k, v = qkv(2, 30, 45, 2, 2, 4, 4, dtype=torch.float32)
    U, _ = prob_sparse_sizes(30, 45, 5)
    torch.manual_seed(7)
    a = flashts.prob_sparse_attention(q, k, v, backend=backend)
    torch.manual_seed(7)
    b = flashts.prob_sparse_attention(q, k, v, sample_index=torch.randint(45, (30, U)), backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    g = torch.Generator().manual_seed(11)
    c = flashts.prob_sparse_attention(q, k, v, generator=g, backend=backend)
    d = flashts.prob_sparse_attention(q, k, v, sample_index=torch.randint(45, (30, U), generator=torch.Generator()
                                                                          .manual_seed(11)), backend=backend)
    e = flashts.prob_sparse_attention(q, k, v, generator=torch.Generator().manual_seed(11), backend=backend)
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    torch.testing.assert_close(c, e, rtol=0, atol=0)
    f = flashts.prob_sparse_attention(q, k, v, generator=torch.Generator().manual_seed(12), backend=backend)
    assert not torch.equal(c, f)  # the samples matter


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous(backend):
    q, k, v = qkv(2, 33, 33, 4, 4, 8, 8, dtype=torch.float32)
    qt, kt, vt = (x.transpose(0, 1).contiguous().transpose(0, 1) for x in (q, k, v))
    si = index_for(33, 33)
    a = flashts.prob_sparse_attention(qt, kt, vt, causal=True, sample_index=si, backend=backend)
    b = flashts.prob_sparse_attention(q, k, v, causal=True, sample_index=si, backend=backend)
    torch.testing.assert_close(a, b)


def test_errors():
    q, k, v = qkv(2, 10, 10, 2, 2, 4, 4, dtype=torch.float32)
    f = flashts.prob_sparse_attention
    for bad in (0, -1, 1.5, True, "5"):
        with pytest.raises(ValueError, match="factor"):
            f(q, k, v, factor=bad)
    with pytest.raises(ValueError, match="causal"):
        f(q, k[:, :7], v[:, :7], causal=True)
    with pytest.raises(ValueError, match="sample_index"):
        f(q, k, v, sample_index=torch.zeros(10, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="sample_index"):
        f(q, k, v, sample_index=torch.zeros(10, 10, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"sample_index.*\[0, L_K=10\)"):
        f(q, k, v, sample_index=torch.full((10, 10), 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="generator"):
        f(q, k, v, sample_index=torch.zeros(10, 10, dtype=torch.int64), generator=torch.Generator())
    with pytest.raises(ValueError, match="generator"):
        f(q, k, v, generator=3)
    with pytest.raises(ValueError, match="time lengths"):
        f(q, k, v[:, :9])
    with pytest.raises(ValueError, match="Hk"):
        f(torch.randn(2, 10, 3, 4), torch.randn(2, 10, 2, 4), torch.randn(2, 10, 2, 4))
    with pytest.raises(ValueError, match="head dims"):
        f(q, k[..., :3], v)
    with pytest.raises(ValueError, match="q"):
        f(q[0], k, v)
    with pytest.raises(TypeError):
        f(q.int(), k, v)
    with pytest.raises(ValueError, match="scale"):
        f(q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        f(q, k, v, backend="nope")


def test_autocast_cpu_bf16():
    q, k, v = qkv(2, 20, 20, 2, 2, 8, 8, dtype=torch.float32)
    si = index_for(20, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = flashts.prob_sparse_attention(q, k, v, sample_index=si)
    assert out.dtype == torch.bfloat16
    ref = flashts.prob_sparse_attention(q, k, v, sample_index=si)
    assert rel_err(out, ref) < 0.05


@pytest.mark.parametrize("compiler,given", [("aot_eager", True), ("aot_eager", False), ("inductor", True)])
def test_torch_compile_fullgraph(compiler, given):
    q, k, v = qkv(2, 24, 24, 2, 2, 4, 4, dtype=torch.float32)
    si = index_for(24, 24)

    def f(q, k, v, si):
        o = flashts.prob_sparse_attention(q * 1.0, k, v, causal=True, sample_index=si if given else None)
        return o.square().sum()

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(5)
    eager = f(*leaves, si)
    eager_grads = torch.autograd.grad(eager, leaves)
    compiled = torch.compile(f, fullgraph=True, backend=compiler)
    leaves2 = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(5)
    out = compiled(*leaves2, si)
    grads = torch.autograd.grad(out, leaves2)
    torch.testing.assert_close(out, eager)  # aot_eager draws the samples with the eager RNG
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b)


_MEMORY_SCRIPT = textwrap.dedent("""
    import torch, flashts

    torch.set_num_threads(1)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    small = [torch.randn(1, 64, 2, 16, requires_grad=True) for _ in range(3)]
    flashts.prob_sparse_attention(*small, causal=True, backend="torch").sum().backward()  # warm-up
    for causal in (False, True):
        L = 8192
        q, k, v = (torch.randn(1, L, 2, 16, requires_grad=True) for _ in range(3))
        g = torch.randn(1, L, 2, 16)
        open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
        before = status("VmRSS")
        flashts.prob_sparse_attention(q, k, v, causal=causal, backend="torch").backward(g)
        print(causal, status("VmHWM") - before)
""")


def test_torch_backend_memory():
    """Peak-RSS growth of forward+backward at L = 8192 (float32, B=1, H=2, D=16) stays far below one L×L score
    matrix per head (2 · 256 MiB; the original's backward even builds an [L, L, D] gradient of its key expansion)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak RSS")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2, res.stdout
    for line in lines:
        growth = int(line.split()[-1])
        assert growth < 64 * 2**20, f"{line}: peak RSS grew {growth / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------------- the drop-in


def _pair(mod, mask_flag, d_model, H, output_attention=False, fix_squeeze=False, factor=5):
    orig = mod.OriginalAttentionLayer(mod.OriginalProbAttention(mask_flag, factor, None, 0.1, output_attention,
                                                                fix_squeeze=fix_squeeze), d_model, H)
    mine = flashts.nn.AttentionLayer(flashts.nn.ProbAttention(mask_flag, factor, None, 0.1, output_attention),
                                     d_model, H)
    mine.load_state_dict(orig.state_dict(), strict=True)
    return orig.double(), mine.double()


@pytest.mark.parametrize("mask_flag,B,L,S,H", [(False, 2, 96, 96, 4), (True, 2, 96, 96, 4), (False, 3, 40, 70, 2),
                                                (False, 2, 50, 23, 2), (True, 2, 33, 33, 2)])
def test_drop_in_equals_original(mask_flag, B, L, S, H):
    """Causal only at L == S: the original asserts L_Q == L_V there (flashts raises ValueError)."""
    mod = _original()
    orig, mine = _pair(mod, mask_flag, 32, H, output_attention=L <= S)
    x = torch.randn(B, L, 32, dtype=torch.float64)
    y = torch.randn(B, S, 32, dtype=torch.float64)
    outs = []
    for layer in (orig, mine):
        torch.manual_seed(123)
        out, attn = layer(x, y, y, None)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        outs.append((out, attn, [p.grad.clone() for p in layer.parameters()]))
    (a, aa, ga), (b, bb, gb) = outs
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    if aa is not None:
        torch.testing.assert_close(bb, aa, rtol=1e-10, atol=1e-12)
    else:
        assert bb is None
    for x1, x2 in zip(ga, gb):
        torch.testing.assert_close(x2, x1, rtol=1e-9, atol=1e-11)


def test_drop_in_inner_call_and_layout():
    """The inner call alone: context [B, H, L_Q, Dv] contiguous, equal to the original's."""
    mod = _original()
    q, k, v = qkv(2, 30, 30, 3, 3, 8, 5, dtype=torch.float32)
    torch.manual_seed(1)
    a, _ = mod.OriginalProbAttention(True, 3)(q, k, v, None)
    torch.manual_seed(1)
    b, attn = flashts.nn.ProbAttention(True, 3)(q, k, v, None)
    assert attn is None and b.shape == (2, 3, 30, 5) and b.is_contiguous()
    torch.testing.assert_close(b, a)
    assert list(flashts.nn.ProbAttention().state_dict()) == list(mod.OriginalProbAttention().state_dict()) == []


@pytest.mark.parametrize("B,H", [(1, 1), (1, 3), (3, 1)])
def test_drop_in_b1_h1(B, H):
    """No .squeeze(): equals the original with only the query axis squeezed (the original itself
    mis-broadcasts at H == 1 < B)."""
    mod = _original()
    orig, mine = _pair(mod, True, 16, H, fix_squeeze=True)
    x = torch.randn(B, 40, 16, dtype=torch.float64)
    torch.manual_seed(9)
    a, _ = orig(x, x, x, None)
    torch.manual_seed(9)
    b, _ = mine(x, x, x, None)
    torch.testing.assert_close(b, a)
    if B > 1 and H == 1:
        bug, _ = _pair(mod, True, 16, H, fix_squeeze=False)
        bug.load_state_dict(orig.state_dict())
        torch.manual_seed(9)
        try:
            c, _ = bug(x, x, x, None)
        except RuntimeError:
            return
        assert not torch.allclose(c, a)


class _EncDec(nn.Module):
    """A small Informer: two encoder layers (ProbSparse self-attention + conv FFN), a decoder layer (causal
    ProbSparse self-attention, ProbSparse cross-attention), the way the library wires them."""

    def __init__(self, make, d_model=16, H=2):
        super().__init__()
        self.enc = nn.ModuleList([make(False, d_model, H) for _ in range(2)])
        self.ffn = nn.ModuleList([nn.Conv1d(d_model, d_model, 1) for _ in range(2)])
        self.dec_self = make(True, d_model, H)
        self.dec_cross = make(False, d_model, H)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x, y):
        for att, ffn in zip(self.enc, self.ffn):
            x = self.norm(x + att(x, x, x, None)[0])
            x = x + ffn(x.transpose(1, 2)).transpose(1, 2)
        y = self.norm(y + self.dec_self(y, y, y, None)[0])
        return self.norm(y + self.dec_cross(y, x, x, None)[0])


def test_informer_model_same_seed_same_output():
    mod = _original()
    orig = _EncDec(lambda m, d, h: mod.OriginalAttentionLayer(mod.OriginalProbAttention(m, 3), d, h)).double()
    mine = _EncDec(lambda m, d, h: flashts.nn.AttentionLayer(flashts.nn.ProbAttention(m, 3), d, h)).double()
    mine.load_state_dict(orig.state_dict(), strict=True)
    x, y = torch.randn(2, 60, 16, dtype=torch.float64), torch.randn(2, 36, 16, dtype=torch.float64)
    torch.manual_seed(4)
    a = orig(x, y)
    torch.manual_seed(4)
    b = mine(x, y)
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    torch.manual_seed(5)
    assert not torch.allclose(mine(x, y), a)  # another seed draws other samples


def test_drop_in_masks():
    q, k, v = qkv(1, 12, 12, 2, 2, 4, 4, dtype=torch.float32)
    tri = torch.ones(12, 12, dtype=torch.bool).triu(1)
    flashts.nn.ProbAttention(True)(q, k, v, tri)
    flashts.nn.ProbAttention(False)(q, k, v, torch.zeros(12, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        flashts.nn.ProbAttention(False)(q, k, v, tri)
    with pytest.raises(ValueError, match="backend"):
        flashts.nn.ProbAttention(backend="gpu")


def test_torch_compile_dynamic_given_index_one_graph():
    """dynamic=True with a given sample_index: one graph over lengths of one ⌈ln L⌉ bucket (default inductor,
    forward + backward, strided q). Drawing the samples needs concrete sizes, so without sample_index the
    lengths are specialised (one graph per length), as the README says."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()

    def f(q, k, v, si):
        return flashts.prob_sparse_attention(q, k, v, factor=2, causal=True, sample_index=si).square().sum()

    compiled = torch.compile(f, dynamic=True, fullgraph=True)
    for T in (21, 25, 30, 41, 50):  # ⌈ln T⌉ = 4 for all
        U, _ = prob_sparse_sizes(T, T, 2)
        si = torch.randint(T, (T, U))
        ins = [torch.randn(2, 2, T, 4).transpose(1, 2), torch.randn(2, T, 2, 4), torch.randn(2, T, 2, 4)]
        leaves = [x.clone().requires_grad_() for x in ins]
        out = compiled(*leaves, si)
        grads = torch.autograd.grad(out, leaves)
        leaves_e = [x.clone().requires_grad_() for x in ins]
        ref = f(*leaves_e, si)
        grads_e = torch.autograd.grad(ref, leaves_e)
        torch.testing.assert_close(out, ref)
        for a, b in zip(grads, grads_e):
            torch.testing.assert_close(a, b)
    assert counters["stats"]["unique_graphs"] == 1
