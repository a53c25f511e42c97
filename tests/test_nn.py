"""flashts.nn: shapes/gradients of every layer, layers == the ops on their projections, streaming
(step / chunks == one parallel pass), TSLib / Autoformer drop-ins (inner classes, state dicts, masks, modes).

CPU, backend="torch", small sizes; float64 wherever outputs are compared exactly.
"""
import pytest
import torch
from torch import nn

import flashts
from flashts import nn as fnn
from flashts import reference

F64 = torch.float64
BE = "torch"
TOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention (runtime 10 s instead of ~50 s on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def close(a, b, tol=TOL):
    """Relative error (against max(‖b‖, 1e-6), so exactly-zero gradients compare by absolute error)."""
    err = (a.double() - b.double()).norm() / max(b.double().norm().item(), 1e-6)
    assert err <= tol, f"relative error {err:.3e} > {tol:.1e}"


def heads(x, H):
    B, T, _ = x.shape
    return x.view(B, T, H, -1)


# ----------------------------------------------------------------------------------- self-attention layers

LAYERS = {
    "linear_causal": lambda: fnn.LinearAttention(24, 4, backend=BE),
    "linear_bidir_relu": lambda: fnn.LinearAttention(24, 4, causal=False, feature_map="relu", backend=BE),
    "linear_gqa": lambda: fnn.LinearAttention(24, 4, n_kv_heads=2, backend=BE),
    "swa_causal": lambda: fnn.SlidingWindowAttention(24, 4, window=(3, 0), backend=BE),
    "swa_band_gqa": lambda: fnn.SlidingWindowAttention(24, 4, window=(2, 3), n_kv_heads=1, backend=BE),
    "autocorr": lambda: fnn.AutoCorrelationAttention(24, 4, factor=1.0, backend=BE),
    "aaren": lambda: fnn.Aaren(24, 4, backend=BE),
    "latte_causal": lambda: fnn.Latte(24, 4, n_latents=5, backend=BE),
    "latte_bidir": lambda: fnn.Latte(24, 4, n_latents=5, causal=False, backend=BE),
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("train", [True, False])
def test_layer_shapes_and_gradients(name, train):
    layer = LAYERS[name]().train(train)
    x = torch.randn(2, 17, 24, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 17, 24) and y.dtype == torch.float32 and torch.isfinite(y).all()
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in layer.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has non-finite gradient"


def _manual(name, layer, x):
    """What the layer must compute, from its own projections and flashts.reference (float64)."""
    B, T, _ = x.shape
    H = layer.n_heads
    if name.startswith(("linear", "swa")):
        Hk = layer.n_kv_heads
        q, k, v = heads(layer.q_proj(x), H), heads(layer.k_proj(x), Hk), heads(layer.v_proj(x), Hk)
        if name.startswith("linear"):
            o = reference.linear_attention(q, k, v, causal=layer.causal, feature_map=layer.feature_map)
        else:
            o = reference.sliding_window_attention(q, k, v, window=layer.window)
    elif name == "autocorr":
        q, k, v = heads(layer.q_proj(x), H), heads(layer.k_proj(x), H), heads(layer.v_proj(x), H)
        o = reference.auto_correlation(q, k, v, factor=layer.factor, mode=layer.mode)
    elif name == "aaren":
        o = reference.aaren_attention(layer.query, heads(layer.k_proj(x), H), heads(layer.v_proj(x), H))
    else:
        o = reference.latte_attention(heads(layer.q_proj(x), H), heads(layer.k_proj(x), H), heads(layer.v_proj(x), H),
                                      causal=layer.causal)
    return layer.out_proj(o.reshape(B, T, -1))


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_equals_op_on_projections(name):
    layer = LAYERS[name]().double().eval()
    x = torch.randn(3, 19, 24, dtype=F64)
    close(layer(x), _manual(name, layer, x))
    if name == "autocorr":  # the other mode too
        layer.train()
        close(layer(x), _manual(name, layer, x))


def test_layer_dropout_on_output():
    layer = fnn.LinearAttention(24, 4, dropout=0.5, backend=BE).double()
    x = torch.randn(2, 9, 24, dtype=F64)
    ref = layer.eval()(x)
    torch.manual_seed(0)
    y = layer.train()(x)
    dropped = y == 0
    assert dropped.any() and (~dropped).any()
    close(y[~dropped], 2 * ref[~dropped])


# ------------------------------------------------------------------------------------------- streaming

STREAMING = {
    "linear": lambda: fnn.LinearAttention(24, 4, backend=BE),
    "linear_gqa_relu": lambda: fnn.LinearAttention(24, 4, n_kv_heads=2, feature_map="relu", backend=BE),
    "aaren": lambda: fnn.Aaren(24, 4, backend=BE),
    "latte": lambda: fnn.Latte(24, 4, n_latents=5, backend=BE),
    "swa_w4": lambda: fnn.SlidingWindowAttention(24, 4, window=(3, 0), backend=BE),
    "swa_w1": lambda: fnn.SlidingWindowAttention(24, 4, window=(0, 0), backend=BE),
    "swa_full_causal": lambda: fnn.SlidingWindowAttention(24, 4, window=(-1, 0), backend=BE),
    "swa_gqa_w6": lambda: fnn.SlidingWindowAttention(24, 4, window=(5, 0), n_kv_heads=2, backend=BE),
}


@pytest.mark.parametrize("name", list(STREAMING))
def test_step_equals_parallel(name):
    layer = STREAMING[name]().double().eval()
    x = torch.randn(2, 13, 24, dtype=F64)
    y = layer(x)
    state, ys = None, []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        assert y_t.shape == (2, 24)
        ys.append(y_t)
    close(torch.stack(ys, dim=1), y)
    # the final state of the steps equals the final state of one pass
    _, final = layer(x, output_final_state=True)
    for a, b in zip(_leaves(state), _leaves(final)):
        if isinstance(a, torch.Tensor):
            close(a, b)
        else:
            assert a == b


def _leaves(state):
    if isinstance(state, dict):
        return [state["k"], state["v"], state["pos"]]
    return list(state)


@pytest.mark.parametrize("name", list(STREAMING))
def test_chunks_and_steps_mixed_equal_parallel(name):
    """forward(chunk, state) and step interleaved (ring buffer wrap-around included) == one pass."""
    layer = STREAMING[name]().double().eval()
    x = torch.randn(2, 23, 24, dtype=F64)
    y = layer(x)
    out, state, t = [], None, 0
    for size in (2, 1, 5, 1, 1, 7, 3, 1, 2):  # sums to 23
        if size == 1:
            y_t, state = layer.step(x[:, t], state)
            out.append(y_t.unsqueeze(1))
        else:
            y_c, state = layer(x[:, t:t + size], state, output_final_state=True)
            out.append(y_c)
        t += size
    close(torch.cat(out, dim=1), y)


@pytest.mark.parametrize("name", ["linear", "aaren", "latte", "swa_w4"])
def test_step_gradients_match_parallel(name):
    layer = STREAMING[name]().double()
    x = torch.randn(1, 7, 24, dtype=F64, requires_grad=True)
    g_par = torch.autograd.grad(layer(x).sum(), [x] + list(layer.parameters()))
    state, total = None, 0
    for t in range(7):
        y_t, state = layer.step(x[:, t], state)
        total = total + y_t.sum()
    g_step = torch.autograd.grad(total, [x] + list(layer.parameters()))
    for a, b in zip(g_step, g_par):
        close(a, b, 1e-9)


@pytest.mark.parametrize("name", ["linear", "aaren", "latte", "swa_w4"])
def test_cu_seqlens_equals_separate_sequences(name):
    layer = STREAMING[name]().double().eval()
    lens = [5, 0, 8, 3]
    xs = [torch.randn(1, n, 24, dtype=F64) for n in lens]
    cu = torch.tensor([0, 5, 5, 13, 16], dtype=torch.int32)
    y = layer(torch.cat(xs, dim=1), cu_seqlens=cu)
    close(y, torch.cat([layer(xi) for xi in xs if xi.shape[1]], dim=1))


@pytest.mark.parametrize("name", ["linear", "aaren", "latte", "swa_w4"])
def test_autocast_bfloat16(name):
    layer = STREAMING[name]()
    x = torch.randn(2, 9, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        state, ys = None, []
        for t in range(9):
            y_t, state = layer.step(x[:, t], state)
            ys.append(y_t)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    close(torch.stack(ys, dim=1).float(), y.float(), 2e-2)
    y.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_streaming_errors():
    x = torch.randn(2, 5, 24)
    for layer in (fnn.LinearAttention(24, 4, causal=False, backend=BE), fnn.Latte(24, 4, 3, causal=False, backend=BE),
                  fnn.SlidingWindowAttention(24, 4, window=(2, 2), backend=BE),
                  fnn.AutoCorrelationAttention(24, 4, backend=BE)):
        with pytest.raises(ValueError, match="streaming"):
            layer.step(x[:, 0], None)
    with pytest.raises(ValueError, match="streaming"):
        fnn.SlidingWindowAttention(24, 4, window=(2, 2), backend=BE)(x, output_final_state=True)
    swa = fnn.SlidingWindowAttention(24, 4, window=(3, 0), backend=BE)
    _, st = swa(x, output_final_state=True)
    assert st["k"].shape == (2, 3, 4, 6) and st["pos"] == 5
    with pytest.raises(ValueError, match=r"state\['k'\]"):
        swa.step(x[:, 0], {"k": st["k"][:, :2], "v": st["v"], "pos": 5})
    with pytest.raises(ValueError, match="dict"):
        swa.step(x[:, 0], (st["k"], st["v"]))
    with pytest.raises(ValueError, match="x: expected"):
        swa.step(x, None)  # a sequence given to step
    with pytest.raises(ValueError, match="x: expected"):
        swa(torch.randn(2, 5, 23))


def test_constructor_errors_and_backend_passthrough():
    with pytest.raises(ValueError, match="divisible"):
        fnn.LinearAttention(10, 4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        fnn.LinearAttention(24, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="backend"):
        fnn.Aaren(24, 4, backend="cudnn")
    with pytest.raises(ValueError, match="window"):
        fnn.SlidingWindowAttention(24, 4, window=(-2, 0))
    with pytest.raises(ValueError, match="factor"):
        fnn.AutoCorrelation(factor=0)
    # the layer's backend reaches the op: "cuda" on CPU tensors is the op's RuntimeError
    with pytest.raises(RuntimeError, match="cuda"):
        fnn.LinearAttention(24, 4, backend="cuda")(torch.randn(1, 3, 24))


# ---------------------------------------------------------------------- TSLib / Autoformer drop-ins


class TriangularCausalMask:
    """TSLib's mask object (layers/masking.py): ``.mask`` is True above the diagonal."""

    def __init__(self, B, L):
        self._mask = torch.triu(torch.ones([B, 1, L, L], dtype=torch.bool), diagonal=1)

    @property
    def mask(self):
        return self._mask


def _project(layer, q_in, k_in, v_in):
    B, L, _ = q_in.shape
    S = k_in.shape[1]
    H = layer.n_heads
    return (layer.query_projection(q_in).view(B, L, H, -1), layer.key_projection(k_in).view(B, S, H, -1),
            layer.value_projection(v_in).view(B, S, H, -1))


def _direct(kind, inner, q, k, v, causal):
    """The functional op called directly on the projected tensors (self-attention, L == S)."""
    if kind == "linear":
        return flashts.linear_attention(q, k, v, causal=causal, feature_map=inner.feature_map, backend=BE)
    if kind == "swa":
        return flashts.sliding_window_attention(q, k, v, window=inner.window, backend=BE)
    if kind == "aaren":
        o = flashts.aaren_attention(inner.query, k, v, backend=BE)
        return o if causal else o[:, -1:].expand_as(o)
    if kind == "latte":
        return flashts.latte_attention(q, k, v, causal=causal, backend=BE)
    return flashts.auto_correlation(q, k, v, factor=inner.factor, mode=inner.mode, backend=BE)


INNER = {
    ("linear", True): lambda: fnn.LinearInnerAttention(True, backend=BE),
    ("linear", False): lambda: fnn.LinearInnerAttention(False, feature_map="relu", backend=BE),
    ("swa", True): lambda: fnn.SlidingWindowInnerAttention(True, window=(4, 0), backend=BE),
    ("swa", False): lambda: fnn.SlidingWindowInnerAttention(False, window=(2, 3), backend=BE),
    ("aaren", True): lambda: fnn.AarenInnerAttention(True, n_heads=4, d_keys=6, backend=BE),
    ("aaren", False): lambda: fnn.AarenInnerAttention(False, n_heads=4, d_keys=6, backend=BE),
    ("latte", True): lambda: fnn.LatteInnerAttention(True, backend=BE),
    ("latte", False): lambda: fnn.LatteInnerAttention(False, backend=BE),
    ("autocorr", False): lambda: fnn.AutoCorrelation(False, factor=1, backend=BE),
}


@pytest.mark.parametrize("kind,causal", list(INNER))
@pytest.mark.parametrize("wrapper", ["AttentionLayer", "AutoCorrelationLayer"])
def test_inner_in_layer_equals_direct_op(kind, causal, wrapper):
    inner = INNER[(kind, causal)]()
    layer = getattr(fnn, wrapper)(inner, d_model=24, n_heads=4).double().eval()
    x = torch.randn(2, 15, 24, dtype=F64)
    y, attn = layer(x, x, x, None)
    assert attn is None and y.shape == (2, 15, 24)
    q, k, v = _project(layer, x, x, x)
    o = _direct(kind, inner, q, k, v, causal)
    close(y, layer.out_projection(o.reshape(2, 15, -1)))


@pytest.mark.parametrize("kind,causal", list(INNER))
def test_inner_shapes_gradients_train_mode(kind, causal):
    inner = INNER[(kind, causal)]()
    layer = fnn.AttentionLayer(inner, d_model=24, n_heads=4, d_values=5).train()
    x = torch.randn(2, 16, 24, requires_grad=True)
    y, _ = layer(x, x, x, None)
    assert y.shape == (2, 16, 24) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    unused = {"query_projection.weight", "query_projection.bias"} if kind == "aaren" else set()
    for name, p in layer.named_parameters():
        if name in unused:
            assert p.grad is None  # documented: Aaren's query is the inner module's parameter
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _dense_linear_bidir(q, k, v, fm, eps=1e-6):
    phq, phk = reference.linear.feature_map_fn(q, fm), reference.linear.feature_map_fn(k, fm)
    S = torch.einsum("bshd,bshe->bhde", phk, v)
    z = phk.sum(1)
    return torch.einsum("blhd,bhde->blhe", phq, S) / (torch.einsum("blhd,bhd->blh", phq, z)[..., None] + eps)


@pytest.mark.parametrize("L,S", [(7, 12), (12, 7)])
@pytest.mark.parametrize("kind", ["linear", "latte_narrow", "latte_wide", "aaren"])
def test_cross_attention_bidirectional(kind, L, S):
    """mask_flag=False with L != S (TSLib decoder cross-attention) equals the dense definition."""
    B, H, E, D = 2, 3, 4, 5
    q, k, v = torch.randn(B, L, H, E, dtype=F64), torch.randn(B, S, H, E, dtype=F64), torch.randn(B, S, H, D, dtype=F64)
    if kind == "linear":
        inner = fnn.LinearInnerAttention(False, backend=BE)
        want = _dense_linear_bidir(q, k, v, "elu")
    elif kind.startswith("latte"):
        inner = fnn.LatteInnerAttention(False, backend=BE)
        # narrow logits (padded keys must weigh nothing even when every real key is near the minimum) and
        # logits of ±1e4 (finite, exact)
        k = k * (0.01 if kind == "latte_narrow" else 1e4)
        mean = torch.einsum("bshl,bshd->bhld", torch.softmax(k, dim=1), v)
        want = torch.einsum("blhj,bhjd->blhd", torch.softmax(q, dim=-1), mean)
    else:
        inner = fnn.AarenInnerAttention(False, n_heads=H, d_keys=E, backend=BE).double()
        w = torch.softmax(torch.einsum("hd,bshd->bsh", inner.query, k) * E ** -0.5, dim=1)
        want = torch.einsum("bsh,bshd->bhd", w, v).unsqueeze(1).expand(B, L, H, D)
    out, attn = inner.eval()(q, k, v, None)
    assert attn is None and out.shape == (B, L, H, D)
    close(out, want)


@pytest.mark.parametrize("kind", ["linear", "swa", "aaren", "latte"])
def test_inner_masks(kind):
    inner = INNER[(kind, True)]().double().eval()
    B, L, H = 2, 9, 4
    q, k, v = (torch.randn(B, L, H, 6, dtype=F64) for _ in range(3))
    base, _ = inner(q, k, v, None)
    # TSLib's TriangularCausalMask object and the plain bool tensor are honoured as causal
    close(inner(q, k, v, TriangularCausalMask(B, L))[0], base, 0.0)
    close(inner(q, k, v, TriangularCausalMask(B, L).mask[0, 0])[0], base, 0.0)
    # a mask with nothing masked = bidirectional (the window stays for sliding-window attention)
    nothing = torch.zeros(B, 1, L, L, dtype=torch.bool)
    if kind == "swa":
        close(inner(q, k, v, nothing)[0], base, 0.0)
    else:
        bidir = {"linear": lambda: fnn.LinearInnerAttention(False, backend=BE),
                 "aaren": lambda: fnn.AarenInnerAttention(False, n_heads=4, d_keys=6, backend=BE),
                 "latte": lambda: fnn.LatteInnerAttention(False, backend=BE)}[kind]().double().eval()
        bidir.load_state_dict(inner.state_dict())  # Aaren's learned query
        close(inner(q, k, v, nothing)[0], bidir(q, k, v, None)[0])
        with pytest.raises(ValueError, match="needs queries and keys of one length"):
            inner(q[:, :5], k, v, None)  # causal cross-attention
    # masks the fused op cannot honour
    band = torch.ones(L, L, dtype=torch.bool).triu(3)
    with pytest.raises(ValueError, match="causal triangle"):
        inner(q, k, v, band)
    with pytest.raises(ValueError, match="boolean"):
        inner(q, k, v, torch.zeros(L, L, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        inner(q, k, v, torch.zeros(L, L + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask"):
        inner(q, k, v, "causal")
    # mask_flag=False: a given mask is refused rather than ignored
    with pytest.raises(ValueError, match="mask_flag=False"):
        INNER[(kind, False)]()(q.float(), k.float(), v.float(), TriangularCausalMask(B, L))


def test_inner_constructor_errors():
    with pytest.raises(ValueError, match="output_attention"):
        fnn.LinearInnerAttention(True, 5, None, 0.1, True)
    with pytest.raises(ValueError, match="causal window"):
        fnn.SlidingWindowInnerAttention(True, window=(4, 4))
    with pytest.raises(ValueError, match="one length"):
        fnn.SlidingWindowInnerAttention(False, window=(4, 4))(*(torch.randn(1, n, 2, 3) for n in (4, 5, 5)), None)
    with pytest.raises(ValueError, match="n_heads"):
        fnn.AarenInnerAttention(True, n_heads=0, d_keys=4)
    with pytest.raises(ValueError, match="d_keys"):
        fnn.AarenInnerAttention(True, n_heads=2, d_keys=4)(*(torch.randn(1, 5, 2, 3) for _ in range(3)), None)
    with pytest.raises(ValueError, match="feature_map"):
        fnn.LinearInnerAttention(feature_map="softmax")


def test_inner_dropout_applies_to_output():
    inner = fnn.LinearInnerAttention(False, attention_dropout=0.5, backend=BE).double()
    q, k, v = (torch.randn(2, 8, 2, 4, dtype=F64) for _ in range(3))
    ref, _ = inner.eval()(q, k, v, None)
    out, _ = inner.train()(q, k, v, None)
    dropped = out == 0
    assert dropped.any() and (~dropped).any()
    close(out[~dropped], 2 * ref[~dropped])


def test_inner_tau_delta_rejected_where_inexact():
    """Latte has no softmax scores for DSAttention's tau/delta: not None raises (tests/test_tslib_fidelity.py has the rest)."""
    layer = fnn.AttentionLayer(fnn.LatteInnerAttention(True, backend=BE), 24, 4).eval()
    x = torch.randn(2, 6, 24)
    with pytest.raises(ValueError, match="tau/delta"):
        layer(x, x, x, None, tau=torch.ones(2, 1), delta=torch.zeros(2, 6))


# ----------------------------------------------------------------------------------- Autoformer


def _autoformer_state_dict(d_model, n_heads, d_keys, d_values):
    """The original AutoCorrelationLayer's parameters, written out by hand (Autoformer layers/AutoCorrelation.py):
    query/key_projection = nn.Linear(d_model, d_keys*n_heads), value_projection = nn.Linear(d_model,
    d_values*n_heads), out_projection = nn.Linear(d_values*n_heads, d_model); the inner AutoCorrelation has none."""
    orig = nn.ModuleDict({
        "query_projection": nn.Linear(d_model, d_keys * n_heads),
        "key_projection": nn.Linear(d_model, d_keys * n_heads),
        "value_projection": nn.Linear(d_model, d_values * n_heads),
        "out_projection": nn.Linear(d_values * n_heads, d_model),
    }).double()
    return orig, {k: v.detach().clone() for k, v in orig.state_dict().items()}


@pytest.mark.parametrize("L,S", [(20, 20), (12, 20), (20, 12)])
@pytest.mark.parametrize("train", [True, False])
def test_autoformer_state_dict_loads_and_matches_reference(L, S, train):
    d_model, H, dk, dv, factor = 16, 4, 3, 5, 2
    orig, sd = _autoformer_state_dict(d_model, H, dk, dv)
    layer = fnn.AutoCorrelationLayer(fnn.AutoCorrelation(False, factor, attention_dropout=0.1, backend=BE),
                                     d_model, H, d_keys=dk, d_values=dv).double()
    assert set(layer.state_dict()) == set(sd)
    layer.load_state_dict(sd, strict=True)
    layer.train(train)
    xq, xkv = torch.randn(3, L, d_model, dtype=F64), torch.randn(3, S, d_model, dtype=F64)
    y, attn = layer(xq, xkv, xkv, None)
    assert attn is None and y.shape == (3, L, d_model)
    q = orig["query_projection"](xq).view(3, L, H, dk)
    k = orig["key_projection"](xkv).view(3, S, H, dk)
    v = orig["value_projection"](xkv).view(3, S, H, dv)
    o = reference.auto_correlation(q, k, v, factor=factor, mode="train" if train else "infer")
    close(y, orig["out_projection"](o.reshape(3, L, H * dv)))  # train mode too: no dropout, as Autoformer


def test_autocorrelation_output_attention_is_autoformer_corr():
    inner = fnn.AutoCorrelation(False, 1, output_attention=True, backend=BE)
    B, L, S, H, E = 2, 11, 8, 3, 4
    q, k, v = torch.randn(B, L, H, E, dtype=F64), torch.randn(B, S, H, E, dtype=F64), torch.randn(B, S, H, 5, dtype=F64)
    out, corr = inner(q, k, v, None)
    assert corr.shape == (B, L, H, E)
    kp = torch.cat([k, k.new_zeros(B, L - S, H, E)], dim=1)
    # corr[b, τ, h, e] = Σ_t q[b, (t+τ) mod L, h, e] · k[b, t, h, e], by direct sums
    want = torch.stack([(torch.roll(q, -tau, dims=1) * kp).sum(1) for tau in range(L)], dim=1)
    close(corr, want)
    close(out, reference.auto_correlation(q, k, v, factor=1, mode="train"))
    assert fnn.AutoCorrelation(False, 1, backend=BE)(q, k, v, None)[1] is None


def test_autocorrelation_mode_follows_train_eval():
    inner = fnn.AutoCorrelation(backend=BE)
    assert inner.training and inner.mode == "train"
    assert inner.eval().mode == "infer" and inner.train().mode == "train"
    # two samples with different periods: shared (train) and per-sample (infer) delays differ
    L, t = 48, torch.arange(48, dtype=F64)
    sig = torch.stack([torch.sin(2 * torch.pi * t / 6), torch.sin(2 * torch.pi * t / 16)])  # [2, L]
    q = (sig[:, :, None, None] + 0.01 * torch.randn(2, L, 2, 3, dtype=F64))
    v = torch.randn(2, L, 2, 3, dtype=F64)
    o_train, _ = inner.train()(q, q, v, None)
    o_infer, _ = inner.eval()(q, q, v, None)
    close(o_train, reference.auto_correlation(q, q, v, factor=1, mode="train"))
    close(o_infer, reference.auto_correlation(q, q, v, factor=1, mode="infer"))
    assert (o_train - o_infer).abs().max() > 1e-3
    layer = fnn.AutoCorrelationAttention(8, 2, backend=BE)
    assert layer.eval().mode == "infer" and layer.train().mode == "train"


def test_autocorrelation_refuses_masks():
    inner = fnn.AutoCorrelation(True, backend=BE)
    q = torch.randn(1, 6, 2, 3)
    with pytest.raises(ValueError, match="attn_mask must be None"):
        inner(q, q, q, TriangularCausalMask(1, 6))


def test_attention_layer_tslib_state_dict_names():
    sd = {
        "query_projection.weight": torch.randn(8, 16), "query_projection.bias": torch.randn(8),
        "key_projection.weight": torch.randn(8, 16), "key_projection.bias": torch.randn(8),
        "value_projection.weight": torch.randn(12, 16), "value_projection.bias": torch.randn(12),
        "out_projection.weight": torch.randn(16, 12), "out_projection.bias": torch.randn(16),
    }
    layer = fnn.AttentionLayer(fnn.LinearInnerAttention(True, backend=BE), 16, 4, d_keys=2, d_values=3)
    layer.load_state_dict(sd, strict=True)
    y, _ = layer(torch.randn(2, 5, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16), None)
    assert y.shape == (2, 5, 16)


def _examples():
    import textwrap

    from flashts.nn import attention, tslib

    for mod in (attention, tslib):
        for name in mod.__all__ if hasattr(mod, "__all__") else dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, type) and obj.__module__ == mod.__name__ and "Example::" in (obj.__doc__ or ""):
                block = obj.__doc__.split("Example::", 1)[1].split("\n", 1)[1]
                yield name, textwrap.dedent(block).split("\n\n\n")[0]


@pytest.mark.parametrize("name,code", list(_examples()), ids=[n for n, _ in _examples()])
def test_docstring_examples_run(name, code):
    """The usage example of every class (copied into the README) runs as written."""
    exec(compile(code, f"<{name} example>", "exec"), {"torch": torch, "flashts": flashts})
