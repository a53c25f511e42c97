"""The REAL CUDA kernels of ``csrc/*.cu`` run on the CPU and checked against ``flashts.reference``.

Each ``.cu`` file is compiled as host C++ with g++ (``-DFLASHTS_HOST_EMU``, ``tests/emulation/cuda_host.h`` first):
the CUDA emulation harness runs every CUDA thread as a fiber, switches them at ``__syncthreads()`` / warp
collectives, and stops a launch on a divergent barrier, a deadlock or a bad launch configuration. Small
``extern "C"`` wrappers (``tests/emulation/*_host.cpp``) call the kernels' own C++ launchers, so the launch
configuration, the shared-memory carving and the tiling are the GPU's. Outputs are NaN-poisoned and surrounded by
NaN canaries (a write outside an output fails the test); inputs are strided; sizes are odd.

Also here: the harness itself (warp functions, faults it must catch, cp.async visibility), the mma wrappers of
``csrc/common.cuh`` against this file's own copy of the PTX ISA fragment tables, and (with nvcc) that the device
branches of those wrappers compile to HMMA / LDGSTS for sm_90.

The shared libraries are built once per source hash into ``$TMPDIR/flashts-emu/`` by ``tests/emulation/emu_build.py``
(about 20 s of CPU on a cold cache, in parallel; reused by later sessions and by the other pytest-xdist workers).
"""
import ctypes
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from flashts import reference as ref

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "emulation"))
import emu_build  # noqa: E402

CSRC, EMU = emu_build.CSRC, emu_build.EMU
F64 = torch.float64
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
LAUNCH_FAILURE, INVALID_VALUE, INVALID_CONFIGURATION = 719, 1, 9

# library name -> source (compiled with -x c++ -include cuda_host.h)
LIBS = {
    "selftest": os.path.join(EMU, "harness_selftest.cu"),
    "prefix_scan": os.path.join(EMU, "prefix_scan_host.cpp"),
    "decode_step": os.path.join(EMU, "decode_step_host.cpp"),
}


# ---------------------------------------------------------------------------------------------------- build

@pytest.fixture(scope="session")
def libs():
    """name -> ctypes.CDLL of every emulated library (tests/emulation/emu_build.py: built in parallel, cached)."""
    if emu_build.compiler() is None:
        pytest.skip("no g++")
    try:
        return emu_build.load(LIBS)
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def schedule(libs):
    """schedule(lib, n): run the fibers of every block of `lib` in order n (0 = thread 0 first, 1 = reversed,
    >= 2 = a seeded shuffle) for this test; reset to 0 afterwards."""
    used = []

    def set_(lib, n):
        used.append(lib)
        lib.flashts_emu_set_schedule(n)

    yield set_
    for lib in used:
        lib.flashts_emu_set_schedule(0)


_last_error = emu_build.last_error


# ---------------------------------------------------------------------------------------------------- helpers

def _ptr(t):
    if t is None:
        return None
    return ctypes.c_void_p(t.data_ptr())


class Strides:
    """Keeps the int64 stride arrays alive for the duration of a call."""

    def __init__(self):
        self.keep = []

    def __call__(self, t, rank=None):
        s = list(t.stride())
        if rank is not None and len(s) < rank:
            s = [0] * (rank - len(s)) + s
        a = torch.tensor(s, dtype=torch.int64)
        self.keep.append(a)
        return _ptr(a)


PAD = 64  # NaN canary elements on each side of every output


class Out:
    """NaN-filled output tensors inside NaN canaries; ``check()`` fails if anything outside them was written."""

    def __init__(self):
        self.bufs = []

    def __call__(self, *shape, dtype=torch.float32):
        n = math.prod(shape)
        buf = torch.full((n + 2 * PAD,), float("nan"), dtype=dtype)
        self.bufs.append((buf, n))
        return buf[PAD:PAD + n].view(*shape)

    def check(self):
        for buf, n in self.bufs:
            assert torch.isnan(buf[:PAD].float()).all() and torch.isnan(buf[PAD + n:].float()).all(), \
                "a kernel wrote outside an output"


def _strided_input(shape, perm, dtype, gen, scale=1.0, shift=0.0):
    """A tensor of `shape` whose memory layout is permuted by `perm` (non-contiguous strides), values rounded to
    `dtype`; returns (kernel input, float64 copy of the rounded values)."""
    base_shape = [shape[i] for i in perm]
    x = (torch.randn(*base_shape, generator=gen, dtype=F64) * scale + shift).to(dtype)
    inv = [perm.index(i) for i in range(len(shape))]
    x = x.permute(*inv)
    assert tuple(x.shape) == tuple(shape)
    return x, x.to(F64)


def _rel(got, want):
    got, want = got.detach().to(F64), want.detach().to(F64)
    assert not torch.isnan(got).any(), "NaN in the kernel output (an element was never written)"
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def _rescale(m, m_ref):
    """e^{m − m_ref}: the factor that refers a state (m, u, w) to the reference's maxima (1 for an empty state,
    whose maxima are −inf on both sides)."""
    m = m.to(F64)
    empty = torch.isinf(m_ref)
    assert torch.equal(torch.isinf(m), empty), "an empty state (max −inf) where the reference has none, or back"
    return torch.where(empty, torch.ones_like(m), torch.exp(m - m_ref))


def _tol(dtype):
    return {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]


# ------------------------------------------------------------------------------------------- mma wrappers
# PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" (.f16/.bf16), written out as in the ISA
# (groupID = lane >> 2, threadID_in_group = lane % 4), independently of csrc/common.cuh's index functions:
#   A (a0..a7; a_i in register i // 2, low half for even i):
#     row = groupID            for a0, a1, a4, a5;  groupID + 8 for a2, a3, a6, a7
#     col = tig * 2 + (i & 1)  for a0..a3;          tig * 2 + (i & 1) + 8 for a4..a7
#   B (b0..b3): row = tig * 2 + (i & 1) for b0, b1; tig * 2 + (i & 1) + 8 for b2, b3;   col = groupID
#   C/D (c0..c3): row = groupID for c0, c1; groupID + 8 for c2, c3;   col = tig * 2 + (i & 1)
# "mma.m16n8k8" with .tf32: A (a0..a3) row = groupID for a0, a2; groupID + 8 for a1, a3; col = tig for a0, a1;
#   tig + 4 for a2, a3.  B (b0, b1) row = tig for b0; tig + 4 for b1; col = groupID.  C/D as above.

def _a_pos_k16(lane, i):
    g, t = lane >> 2, lane % 4
    row = g if i in (0, 1, 4, 5) else g + 8
    col = t * 2 + (i & 1) + (8 if i >= 4 else 0)
    return row, col


def _b_pos_k16(lane, i):
    g, t = lane >> 2, lane % 4
    return t * 2 + (i & 1) + (8 if i >= 2 else 0), g


def _c_pos(lane, i):
    g, t = lane >> 2, lane % 4
    return (g if i < 2 else g + 8), t * 2 + (i & 1)


def _a_pos_k8(lane, i):
    g, t = lane >> 2, lane % 4
    return (g if i in (0, 2) else g + 8), (t if i < 2 else t + 4)


def _b_pos_k8(lane, i):
    g, t = lane >> 2, lane % 4
    return (t if i == 0 else t + 4), g


def _bits16(x):
    return int(x.view(torch.int16).item()) & 0xFFFF


def _fragments(kind, A, B, C):
    """Per-lane registers (uint32 [32,4], [32,2], float32 [32,4]) of matrices A [16,K], B [K,8], C [16,8]."""
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    c = np.zeros((32, 4), np.float32)
    for lane in range(32):
        if kind == "tf32":
            for i in range(4):
                a[lane, i] = np.float32(A[_a_pos_k8(lane, i)]).view(np.uint32)
            for i in range(2):
                b[lane, i] = np.float32(B[_b_pos_k8(lane, i)]).view(np.uint32)
        else:
            dt = torch.bfloat16 if kind == "bf16" else torch.float16
            for i in range(8):
                a[lane, i // 2] |= _bits16(torch.tensor(A[_a_pos_k16(lane, i)], dtype=dt)) << (16 * (i & 1))
            for i in range(4):
                b[lane, i // 2] |= _bits16(torch.tensor(B[_b_pos_k16(lane, i)], dtype=dt)) << (16 * (i & 1))
        for i in range(4):
            c[lane, i] = C[_c_pos(lane, i)]
    return a, b, c


def _unfragment(d):
    D = np.full((16, 8), np.nan)
    for lane in range(32):
        for i in range(4):
            D[_c_pos(lane, i)] = d[lane, i]
    return D


def _tf32(x):
    """cvt.rna.tf32.f32 of float32 values (round to nearest, ties away from zero, 10 mantissa bits)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x1000) & 0xFFFFE000).astype(np.uint32)
    return u.view(np.float32)


def _np_ptr(a):
    return ctypes.c_void_p(a.ctypes.data)


@pytest.mark.parametrize("kind", ["bf16", "f16", "tf32"])
def test_mma_wrapper_fragments(libs, kind):
    """Fragments built from the ISA table above, fed to the wrapper's host branch: D = C + reps·A·B exactly."""
    lib = libs["selftest"]
    rng = np.random.default_rng({"bf16": 1, "f16": 2, "tf32": 3}[kind])
    K = 8 if kind == "tf32" else 16
    A = rng.integers(-6, 7, (16, K)).astype(np.float64)  # small integers: every product and sum is exact
    B = rng.integers(-6, 7, (K, 8)).astype(np.float64)
    C = rng.integers(-50, 51, (16, 8)).astype(np.float64)
    a, b, c = _fragments(kind, A, B, C)
    for reps in (1, 2):
        d = np.full((32, 4), np.nan, np.float32)
        rc = lib.st_mma_probe({"bf16": 0, "f16": 1, "tf32": 2}[kind], _np_ptr(a), _np_ptr(b), _np_ptr(c), _np_ptr(d),
                              reps)
        assert rc == 0, _last_error(lib)
        np.testing.assert_array_equal(_unfragment(d), C + reps * (A @ B))


def test_mma_tf32_rounds_operands(libs):
    """mma_m16n8k8_tf32 rounds A and B to TF32 (cvt.rna) like the GPU: compare with the model on rounded inputs."""
    lib = libs["selftest"]
    rng = np.random.default_rng(7)
    A = rng.standard_normal((16, 8)).astype(np.float32)
    B = rng.standard_normal((8, 8)).astype(np.float32)
    C = rng.standard_normal((16, 8)).astype(np.float32)
    a, b, c = _fragments("tf32", A, B, C)
    d = np.full((32, 4), np.nan, np.float32)
    assert lib.st_mma_probe(2, _np_ptr(a), _np_ptr(b), _np_ptr(c), _np_ptr(d), 1) == 0
    got = _unfragment(d)
    want = C.astype(np.float64) + _tf32(A).astype(np.float64) @ _tf32(B).astype(np.float64)
    unrounded = C.astype(np.float64) + A.astype(np.float64) @ B.astype(np.float64)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(unrounded - want).max() > 1e-4  # the check can tell rounded from unrounded operands


def test_ldmatrix_wrappers(libs):
    """ldmatrix_x4 / _x4_trans / _x2 / _x2_trans with common.cuh's recipes give the ISA's mma fragments."""
    lib = libs["selftest"]
    g = torch.Generator().manual_seed(5)
    A = torch.randn(16, 16, generator=g).to(torch.bfloat16)
    B = torch.randn(16, 16, generator=g).to(torch.bfloat16)  # [k][n]
    Bt = B[:, :8].T.contiguous()  # [n][k] of n-tile 0
    ra, rb = np.zeros((32, 4), np.uint32), np.zeros((32, 4), np.uint32)
    rb2, rbt = np.zeros((32, 2), np.uint32), np.zeros((32, 2), np.uint32)
    assert lib.st_ldmatrix(_ptr(A), _ptr(B), _ptr(Bt), _np_ptr(ra), _np_ptr(rb), _np_ptr(rb2), _np_ptr(rbt)) == 0, \
        _last_error(lib)
    Af, Bf = A.float().numpy(), B.float().numpy()
    zero_c = np.zeros((16, 8))
    want_a, want_b0, _ = _fragments("bf16", Af, Bf[:, :8], zero_c)
    _, want_b1, _ = _fragments("bf16", Af, Bf[:, 8:], zero_c)
    np.testing.assert_array_equal(ra, want_a)
    np.testing.assert_array_equal(rb[:, :2], want_b0)
    np.testing.assert_array_equal(rb[:, 2:], want_b1)
    np.testing.assert_array_equal(rb2, want_b0)
    np.testing.assert_array_equal(rbt, want_b0)


@pytest.mark.parametrize("order", [0, 1, 5])
def test_tiled_gemm_example(libs, schedule, order):
    """gemm_bf16_kernel (cp.async double buffer + MmaM16n8k16 gathers + mma_m16n8k16_bf16), two warps."""
    lib = libs["selftest"]
    schedule(lib, order)
    g = torch.Generator().manual_seed(11)
    M, N, K = 32, 16, 48
    A = torch.randint(-3, 4, (M, K), generator=g).to(torch.bfloat16)
    B = torch.randint(-3, 4, (N, K), generator=g).to(torch.bfloat16)
    out = Out()
    C = out(M, N)
    assert lib.st_gemm_bf16(_ptr(A), _ptr(B), _ptr(C), M, N, K) == 0, _last_error(lib)
    out.check()
    torch.testing.assert_close(C.to(F64), A.to(F64) @ B.to(F64).T, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- the harness

def test_warp_functions(libs):
    lib = libs["selftest"]
    g = torch.Generator().manual_seed(3)
    v = torch.randint(0, 9, (64,), generator=g, dtype=torch.int32)
    out = torch.zeros(64, 10, dtype=torch.int32)
    assert lib.st_warp_ops(_ptr(v), _ptr(out)) == 0, _last_error(lib)
    x = v.tolist()
    for tid in range(64):
        w, lane = tid // 32, tid % 32
        wv = x[32 * w:32 * w + 32]
        seg8, seg16 = lane & ~7, lane & ~15
        want = [
            wv[lane ^ 5] + (wv[lane ^ 1] if lane < 16 else 0),
            wv[lane - 3] if lane - seg8 >= 3 else wv[lane],
            wv[lane + 2] if lane - seg16 + 2 < 16 else wv[lane],
            wv[seg8 + 7 - (lane & 7)],
            sum(1 << j for j in range(32) if wv[j] & 1) - (1 << 32 if wv[31] & 1 else 0),
            sum(e & 1 for e in x),
            int(any(e == 3 for e in wv)),
            1,
            sum(wv),
            sum(wv),
        ]
        assert out[tid].tolist() == want, tid


FAULTS = [  # (case of st_faulty, return code, words in the message)
    (0, LAUNCH_FAILURE, "divergent __syncthreads()"),
    (1, LAUNCH_FAILURE, "others of the block exited"),
    (2, LAUNCH_FAILURE, "deadlock"),
    (3, LAUNCH_FAILURE, "misaligned"),
    (5, INVALID_CONFIGURATION, "invalid configuration"),
    (6, INVALID_VALUE, "dynamic shared memory"),
]


@pytest.mark.parametrize("case,code,words", FAULTS)
def test_harness_catches(libs, case, code, words):
    lib = libs["selftest"]
    lib.flashts_emu_clear_error()
    x = torch.arange(64, dtype=torch.float32)
    y = torch.zeros(256)
    assert lib.st_faulty(case, _ptr(x), _ptr(y)) == code
    assert words in _last_error(lib)
    lib.flashts_emu_clear_error()


def test_schedules_expose_a_race(libs, schedule):
    """racy_kernel reads a neighbour's shared-memory write without a barrier: forward and reverse schedules differ."""
    lib = libs["selftest"]
    ys = []
    for order in (0, 1):
        schedule(lib, order)
        y = torch.zeros(64)
        assert lib.st_faulty(4, None, _ptr(y)) == 0
        ys.append(y)
    assert torch.isnan(ys[0][:63]).all()  # forward: the neighbour has not written yet (poisoned smem)
    assert ys[1][:63].tolist() == [float(i + 1) for i in range(63)]  # reverse: it has


def test_cp_async_completes_at_the_wait(libs):
    lib = libs["selftest"]
    x = torch.arange(1, 5, dtype=torch.float32)
    before, after = torch.zeros(4), torch.zeros(4)
    assert lib.st_cp_async_visibility(_ptr(x), _ptr(before), _ptr(after)) == 0
    assert torch.isnan(before).all() and after.tolist() == x.tolist()


def test_device_branches_compile_to_tensor_core_and_cp_async_sass(tmp_path):
    """nvcc, sm_90: the mma probes hold HMMA, the ldmatrix probe LDSM, the tiled GEMM HMMA and LDGSTS (cp.async),
    and nothing spills."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cuda_resources as cr
    if cr.find_tool("nvcc") is None:
        pytest.skip("nvcc not installed")
    cuobjdump = cr.find_tool("cuobjdump")
    if cuobjdump is None:  # Triton ships one
        import triton
        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        cuobjdump = cand if os.path.exists(cand) else None
    if cuobjdump is None:
        pytest.fail("cuobjdump not found: pip install nvidia-cuda-cuobjdump")
    cubin = str(tmp_path / "selftest.cubin")
    res = subprocess.run([cr.find_tool("nvcc"), *cr.NVCC_FLAGS, f"-I{CSRC}", "-cubin", "-arch=sm_90", "-Xptxas", "-v",
                          LIBS["selftest"], "-o", cubin], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    per = {name: v for name, v in cr.parse_sass(sass).items()}
    props = cr.parse_ptxas(res.stdout + res.stderr)
    assert all(p["spill_stores"] == 0 and p["spill_loads"] == 0 for p in props.values())

    def find(fragment):
        hits = [v for k, v in per.items() if fragment in k]
        assert hits, f"{fragment} not in the cubin"
        return hits

    for probe in find("mma_probe_kernel"):
        assert probe["hmma"] > 0
    (gemm,) = find("gemm_bf16_kernel")
    assert gemm["hmma"] > 0 and gemm["ldgsts"] > 0
    ldsm = [block for block in sass.split("Function : ")[1:] if "ldmatrix_probe" in block.split("\n")[0]]
    assert len(ldsm) == 1 and ldsm[0].count("LDSM") >= 4


# ------------------------------------------------------------------------------------------- Aaren / Latte

AAREN_CASES = [  # (B, T, H, D, Dv, dtype, state, shared_q, cu_seqlens, schedule)
    (2, 37, 3, 5, 7, torch.float32, True, False, None, 1),
    (1, 45, 2, 37, 33, torch.float32, False, True, [0, 9, 9, 45], 2),
    (2, 13, 2, 8, 6, torch.bfloat16, True, False, None, 0),
]


@pytest.mark.parametrize("B,T,H,D,Dv,dtype,state,shared_q,cu,order", AAREN_CASES)
def test_aaren_kernels(libs, schedule, B, T, H, D, Dv, dtype, state, shared_q, cu, order):
    lib = libs["prefix_scan"]
    schedule(lib, order)
    g = torch.Generator().manual_seed(B * 100 + T + D)
    N = B if cu is None else len(cu) - 1
    q, q64 = _strided_input((H, D) if shared_q else (B, H, D), (1, 0) if shared_q else (2, 0, 1), dtype, g)
    k, k64 = _strided_input((B, T, H, D), (0, 2, 1, 3), dtype, g, scale=1.5)
    v, v64 = _strided_input((B, T, H, Dv), (2, 0, 1, 3), dtype, g)
    do, do64 = _strided_input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    scale = D ** -0.5
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    st = Strides()
    # q [B, H, D] or shared [H, D] as a ScanTensor (stride_b, stride_t unused, stride_h, stride_x)
    q_strides = torch.tensor([0, 0, *q.stride()] if shared_q else [q.stride(0), 0, q.stride(1), q.stride(2)],
                             dtype=torch.int64)
    sq = _ptr(q_strides)
    sz = torch.tensor([B, T, H, 1, D, Dv, N], dtype=torch.int64)
    m0 = u0 = w0 = None
    if state:
        m0 = torch.randn(N, H, generator=g, dtype=F64)
        u0 = torch.rand(N, H, generator=g, dtype=F64) + 0.5
        w0 = torch.randn(N, H, Dv, generator=g, dtype=F64)
    duT = torch.randn(N, H, generator=g, dtype=F64)
    dwT = torch.randn(N, H, Dv, generator=g, dtype=F64)
    f32 = lambda x: None if x is None else x.float().contiguous()  # noqa: E731

    # reference (float64, on the rounded inputs) with gradients
    qr, kr, vr = (x.clone().requires_grad_() for x in (q64, k64, v64))
    st_ref = None
    if state:
        u0r, w0r = u0.clone().requires_grad_(), w0.clone().requires_grad_()
        st_ref = (m0, u0r, w0r)
    o_ref, (mT_ref, uT_ref, wT_ref) = ref.aaren_attention(qr, kr, vr, scale=scale, initial_state=st_ref,
                                                          output_final_state=True, cu_seqlens=cu_t)
    loss = (o_ref * do64).sum() + (uT_ref * duT).sum() + (wT_ref * dwT).sum()
    grads = torch.autograd.grad(loss, [qr, kr, vr] + ([u0r, w0r] if state else []))

    out = Out()
    o = out(B, T, H, Dv, dtype=dtype)
    mT, uT, wT = out(N, H), out(N, H), out(N, H, Dv)
    m0f, u0f, w0f = f32(m0), f32(u0), f32(w0)
    rc = lib.emu_aaren_fwd(DTYPES[dtype], _ptr(q), sq, _ptr(k), st(k), _ptr(v), st(v), _ptr(sz), _ptr(cu_t),
                           ctypes.c_float(scale), _ptr(m0f), _ptr(u0f), _ptr(w0f), _ptr(o), _ptr(mT), _ptr(uT),
                           _ptr(wT))
    assert rc == 0, _last_error(lib)
    tol = _tol(dtype)
    assert _rel(o, o_ref) < tol
    c = _rescale(mT, mT_ref)  # the state is (m, u, w) up to the choice of m
    assert _rel(uT.to(F64) * c, uT_ref) < tol and _rel(wT.to(F64) * c.unsqueeze(-1), wT_ref) < tol

    ws = out(3, B, T, H)
    dq_rows, dk, dv = out(N, H, D), out(B, T, H, D, dtype=dtype), out(B, T, H, Dv, dtype=dtype)
    du0, dw0 = (out(N, H), out(N, H, Dv)) if state else (None, None)
    duTf, dwTf = f32(duT), f32(dwT)  # (named: a temporary's memory would be freed before the call)
    rc = lib.emu_aaren_bwd(DTYPES[dtype], _ptr(do), st(do), _ptr(q), sq, _ptr(k), st(k), _ptr(v), st(v),
                           _ptr(sz), _ptr(cu_t), ctypes.c_float(scale), _ptr(m0f), _ptr(u0f), _ptr(w0f),
                           _ptr(duTf), _ptr(dwTf), _ptr(ws[0]), _ptr(ws[1]), _ptr(ws[2]), _ptr(dq_rows),
                           _ptr(dk), _ptr(dv), _ptr(du0), _ptr(dw0))
    assert rc == 0, _last_error(lib)
    dq = dq_rows.sum(0) if shared_q else dq_rows  # per-row sums; a shared q sums them
    got = [dq, dk, dv] + ([du0, dw0] if state else [])
    for name, a, b in zip(["dq", "dk", "dv", "du0", "dw0"], got, grads):
        assert _rel(a, b) < (tol if dtype == torch.float32 else 6e-2), name
    out.check()


LATTE_CASES = [  # (B, T, H, L, Dv, dtype, causal, state, cu_seqlens, schedule)
    (2, 21, 2, 5, 6, torch.float32, True, True, None, 1),
    (2, 19, 2, 11, 37, torch.float32, False, False, None, 2),
    (1, 40, 2, 3, 5, torch.float32, True, True, [0, 7, 40], 0),
    (1, 33, 1, 9, 35, torch.float32, True, False, None, 3),
    (2, 11, 2, 4, 8, torch.bfloat16, True, True, None, 1),
]


@pytest.mark.parametrize("B,T,H,L,Dv,dtype,causal,state,cu,order", LATTE_CASES)
def test_latte_kernels(libs, schedule, B, T, H, L, Dv, dtype, causal, state, cu, order):
    lib = libs["prefix_scan"]
    schedule(lib, order)
    g = torch.Generator().manual_seed(B * 100 + T + L)
    N = B if cu is None else len(cu) - 1
    q, q64 = _strided_input((B, T, H, L), (0, 2, 1, 3), dtype, g, scale=2.0)
    k, k64 = _strided_input((B, T, H, L), (2, 0, 1, 3), dtype, g, scale=2.0)
    v, v64 = _strided_input((B, T, H, Dv), (0, 1, 2, 3), dtype, g)
    do, do64 = _strided_input((B, T, H, Dv), (1, 0, 2, 3), dtype, g)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    st = Strides()
    sz = torch.tensor([B, T, H, L, L, Dv, N], dtype=torch.int64)
    m0 = a0 = S0 = None
    if state:
        m0 = torch.randn(N, H, L, generator=g, dtype=F64)
        a0 = torch.rand(N, H, L, generator=g, dtype=F64) + 0.5
        S0 = torch.randn(N, H, L, Dv, generator=g, dtype=F64)
    daT = torch.randn(N, H, L, generator=g, dtype=F64) if causal else None
    dST = torch.randn(N, H, L, Dv, generator=g, dtype=F64) if causal else None
    f32 = lambda x: None if x is None else x.float().contiguous()  # noqa: E731

    qr, kr, vr = (x.clone().requires_grad_() for x in (q64, k64, v64))
    st_ref, extra = None, []
    if state:
        a0r, S0r = a0.clone().requires_grad_(), S0.clone().requires_grad_()
        st_ref, extra = (m0, a0r, S0r), [a0r, S0r]
    if causal:
        o_ref, (mT_ref, aT_ref, ST_ref) = ref.latte_attention(qr, kr, vr, causal=True, initial_state=st_ref,
                                                              output_final_state=True, cu_seqlens=cu_t)
        loss = (o_ref * do64).sum() + (aT_ref * daT).sum() + (ST_ref * dST).sum()
    else:
        o_ref = ref.latte_attention(qr, kr, vr, causal=False, cu_seqlens=cu_t)
        loss = (o_ref * do64).sum()
    grads = torch.autograd.grad(loss, [qr, kr, vr] + extra)

    out = Out()
    o = out(B, T, H, Dv, dtype=dtype)
    mT, aT, ST = (out(N, H, L), out(N, H, L), out(N, H, L, Dv)) if causal else (None, None, None)
    m0f, a0f, S0f = f32(m0), f32(a0), f32(S0)
    rc = lib.emu_latte_fwd(DTYPES[dtype], _ptr(q), st(q), _ptr(k), st(k), _ptr(v), st(v), _ptr(sz), _ptr(cu_t),
                           int(causal), _ptr(m0f), _ptr(a0f), _ptr(S0f), _ptr(o), _ptr(mT), _ptr(aT), _ptr(ST))
    assert rc == 0, _last_error(lib)
    tol = _tol(dtype)
    assert _rel(o, o_ref) < tol
    if causal:
        c = _rescale(mT, mT_ref)
        assert _rel(aT.to(F64) * c, aT_ref) < tol and _rel(ST.to(F64) * c.unsqueeze(-1), ST_ref) < tol

    ws = out(3, B, T, H, L) if causal else None
    dq, dk = out(B, T, H, L, dtype=dtype), out(B, T, H, L, dtype=dtype)
    dv = out(B, T, H, Dv, dtype=dtype)
    da0, dS0 = (out(N, H, L), out(N, H, L, Dv)) if state else (None, None)
    daTf, dSTf = f32(daT), f32(dST)
    rc = lib.emu_latte_bwd(DTYPES[dtype], _ptr(do), st(do), _ptr(q), st(q), _ptr(k), st(k), _ptr(v), st(v),
                           _ptr(sz), _ptr(cu_t), int(causal), _ptr(m0f), _ptr(a0f), _ptr(S0f), _ptr(daTf),
                           _ptr(dSTf), _ptr(None if ws is None else ws[0]), _ptr(None if ws is None else ws[1]),
                           _ptr(None if ws is None else ws[2]), _ptr(dq), _ptr(dk), _ptr(dv), _ptr(da0), _ptr(dS0))
    assert rc == 0, _last_error(lib)
    for name, a, b in zip(["dq", "dk", "dv", "da0", "dS0"], [dq, dk, dv] + ([da0, dS0] if state else []), grads):
        assert _rel(a, b) < (tol if dtype == torch.float32 else 6e-2), name
    out.check()


# ------------------------------------------------------------------------------------------- decode steps

def _step_input(x, t, dtype):
    """Time step t of x [B, T, Hx, X] as a strided [B, Hx, X] kernel input (every other element of a buffer)."""
    B, _, Hx, X = x.shape
    buf = torch.zeros(B, Hx, 2 * X, dtype=dtype)
    view = buf[:, :, ::2]
    view.copy_(x[:, t].to(dtype))
    return view


@pytest.mark.parametrize("dtype,Dv,order", [(torch.float32, 8, 1), (torch.float32, 7, 2), (torch.bfloat16, 12, 0)])
def test_decode_linear_and_aaren_steps(libs, schedule, dtype, Dv, order):
    lib = libs["decode_step"]
    schedule(lib, order)
    g = torch.Generator().manual_seed(40 + Dv)
    B, T, H, Hk, D = 2, 4, 4, 2, 5
    tol = _tol(dtype) if dtype == torch.float32 else 4e-2
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=F64) * scale).to(dtype).to(F64)  # noqa: E731
    # linear attention (GQA: H = 2·Hk), elu feature map, normalised, with an initial state
    q, k, v = rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv)
    S0 = torch.randn(B, H, D, Dv, generator=g, dtype=F64)
    z0 = torch.rand(B, H, D, generator=g, dtype=F64) + 1.0
    o_ref, (S_ref, z_ref) = ref.linear_attention(q, k, v, feature_map="elu", normalize=True, scale=0.7,
                                                 initial_state=(S0, z0), output_final_state=True)
    S, z = S0.float().contiguous(), z0.float().contiguous()
    st = Strides()
    for t in range(T):
        qs, ks, vs = _step_input(q, t, dtype), _step_input(k, t, dtype), _step_input(v, t, dtype)
        out = Out()
        o = out(B, H, Dv, dtype=dtype)
        rc = lib.emu_linear_step(DTYPES[dtype], _ptr(qs), st(qs), _ptr(ks), st(ks), _ptr(vs), st(vs),
                                 *[ctypes.c_int64(x) for x in (B, H, Hk, D, Dv)], 0, 1, ctypes.c_float(0.7),
                                 ctypes.c_float(1e-6), _ptr(S), _ptr(z), _ptr(S), _ptr(z), _ptr(o))
        assert rc == 0, _last_error(lib)
        out.check()
        assert _rel(o, o_ref[:, t]) < tol, t
    assert _rel(S, S_ref) < 2e-5 and _rel(z, z_ref) < 2e-5  # float32 state, exact inputs

    # Aaren, shared query [H, D], from the empty state (null pointers at t = 0)
    qa = rnd(H, D)
    ka, va = rnd(B, T, H, D, scale=2.0), rnd(B, T, H, Dv)
    o_ref, (m_ref, u_ref, w_ref) = ref.aaren_attention(qa, ka, va, scale=0.9, output_final_state=True)
    qk = qa.to(dtype).contiguous()
    keep = torch.tensor([0, D, 1], dtype=torch.int64)
    m, u, w = torch.zeros(B, H), torch.zeros(B, H), torch.zeros(B, H, Dv)
    for t in range(T):
        ks, vs = _step_input(ka, t, dtype), _step_input(va, t, dtype)
        out = Out()
        o = out(B, H, Dv, dtype=dtype)
        first = t == 0
        rc = lib.emu_aaren_step(DTYPES[dtype], _ptr(qk), _ptr(keep), _ptr(ks), st(ks), _ptr(vs), st(vs),
                                *[ctypes.c_int64(x) for x in (B, H, D, Dv)], ctypes.c_float(0.9),
                                None if first else _ptr(m), None if first else _ptr(u), None if first else _ptr(w),
                                _ptr(m), _ptr(u), _ptr(w), _ptr(o))
        assert rc == 0, _last_error(lib)
        out.check()
        assert _rel(o, o_ref[:, t]) < tol, t
    c = _rescale(m, m_ref)
    assert _rel(u.to(F64) * c, u_ref) < 2e-5 and _rel(w.to(F64) * c.unsqueeze(-1), w_ref) < 2e-5


@pytest.mark.parametrize("dtype,Dv,left,order", [(torch.float32, 8, 3, 1), (torch.float32, 5, 0, 2),
                                                 (torch.bfloat16, 16, 5, 0)])
def test_decode_latte_and_ring_steps(libs, schedule, dtype, Dv, left, order):
    lib = libs["decode_step"]
    schedule(lib, order)
    g = torch.Generator().manual_seed(60 + Dv + left)
    B, T, H, Hk, L, D = 2, 7, 2, 1, 11, 8
    tol = _tol(dtype) if dtype == torch.float32 else 4e-2
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=F64) * scale).to(dtype).to(F64)  # noqa: E731
    st = Strides()
    # Latte, causal, with an initial state
    q, k, v = rnd(B, T, H, L, scale=2.0), rnd(B, T, H, L, scale=3.0), rnd(B, T, H, Dv)
    m0 = torch.randn(B, H, L, generator=g, dtype=F64)
    a0 = torch.rand(B, H, L, generator=g, dtype=F64) + 0.5
    S0 = torch.randn(B, H, L, Dv, generator=g, dtype=F64)
    o_ref, (m_ref, a_ref, S_ref) = ref.latte_attention(q, k, v, initial_state=(m0, a0, S0), output_final_state=True)
    m, a, S = (x.float().contiguous() for x in (m0, a0, S0))
    for t in range(T):
        qs, ks, vs = _step_input(q, t, dtype), _step_input(k, t, dtype), _step_input(v, t, dtype)
        out = Out()
        o = out(B, H, Dv, dtype=dtype)
        rc = lib.emu_latte_step(DTYPES[dtype], _ptr(qs), st(qs), _ptr(ks), st(ks), _ptr(vs), st(vs),
                                *[ctypes.c_int64(x) for x in (B, H, L, Dv)], _ptr(m), _ptr(a), _ptr(S), _ptr(m),
                                _ptr(a), _ptr(S), _ptr(o))
        assert rc == 0, _last_error(lib)
        out.check()
        assert _rel(o, o_ref[:, t]) < tol, t
    c = _rescale(m, m_ref)
    assert _rel(a.to(F64) * c, a_ref) < 2e-5 and _rel(S.to(F64) * c.unsqueeze(-1), S_ref) < 2e-5

    # sliding-window ring buffer (window (left, 0)), GQA H = 2·Hk; unfilled slots are NaN and must not be read
    W = left + 1
    q, k, v = rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv)
    scale = D ** -0.5
    o_ref = ref.sliding_window_attention(q, k, v, window=(left, 0), scale=scale)
    kc = torch.full((B, W, Hk, D), float("nan"), dtype=dtype)
    vc = torch.full((B, W, Hk, Dv), float("nan"), dtype=dtype)
    pos = torch.zeros(B, dtype=torch.int64)
    for t in range(T):
        qs, ks, vs = _step_input(q, t, dtype), _step_input(k, t, dtype), _step_input(v, t, dtype)
        out = Out()
        o = out(B, H, Dv, dtype=dtype)
        rc = lib.emu_swa_ring_step(DTYPES[dtype], _ptr(qs), st(qs), _ptr(ks), st(ks), _ptr(vs), st(vs),
                                   *[ctypes.c_int64(x) for x in (B, H, Hk, D, Dv, W)], ctypes.c_float(scale),
                                   _ptr(kc), _ptr(vc), _ptr(pos), _ptr(o))
        assert rc == 0, _last_error(lib)
        out.check()
        assert _rel(o, o_ref[:, t]) < tol, t
        pos += 1
        assert torch.equal(kc[:, t % W].to(F64), k[:, t])


@pytest.mark.parametrize("dtype,Dv,left,order", [(torch.float32, 8, 4, 1), (torch.float32, 7, 3, 2),
                                                 (torch.float32, 5, 0, 0), (torch.bfloat16, 12, 4, 0),
                                                 (torch.float32, 6, 133, 2)])   # more slots than threads
def test_decode_macchiato_step(libs, schedule, dtype, Dv, left, order):
    """Macchiato decode kernel, several consecutive steps from a state whose windows are empty, partly filled and
    full (per sequence); unused window slots are NaN (must not be read; the shift zeroes them as the op does)."""
    lib = libs["decode_step"]
    schedule(lib, order)
    g = torch.Generator().manual_seed(80 + Dv + left)
    B, T, H, D, L, W = 3, 5, 2, 5, 3, left
    tol = _tol(dtype) if dtype == torch.float32 else 4e-2
    rnd = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=F64) * scale).to(dtype).to(F64)  # noqa: E731
    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, Dv)
    mix, lk = rnd(B, T, H, L + 1, scale=2.0), rnd(B, T, H, L, scale=2.0)
    n0 = torch.tensor([0, min(2, W), W], dtype=torch.int32)
    kw0 = torch.randn(B, W, H, D, generator=g, dtype=F64)
    vw0 = torch.randn(B, W, H, Dv, generator=g, dtype=F64)
    for b in range(B):
        kw0[b, :W - int(n0[b])] = float("nan")
        vw0[b, :W - int(n0[b])] = float("nan")
    m0 = torch.randn(B, H, L, generator=g, dtype=F64)
    a0 = torch.rand(B, H, L, generator=g, dtype=F64) + 0.5
    S0 = torch.randn(B, H, L, Dv, generator=g, dtype=F64)
    scale = 0.8
    init = (kw0.float().to(F64), vw0.float().to(F64), n0, m0.float().to(F64), a0.float().to(F64),
            S0.float().to(F64))
    o_ref, (kw_ref, vw_ref, n_ref, m_ref, a_ref, S_ref) = ref.latte_macchiato_attention(
        q, k, v, mix, lk, window=(left, 0), scale=scale, initial_state=init, output_final_state=True)
    kw, vw, n, m, a, S = (x.float().contiguous() for x in (kw0, vw0, n0, m0, a0, S0))
    n = n0.clone()
    st = Strides()
    for t in range(T):
        xs = [_step_input(x, t, dtype) for x in (q, k, v, mix, lk)]
        args = []
        for x in xs:
            args += [_ptr(x), st(x)]
        out = Out()
        o = out(B, H, Dv, dtype=dtype)
        rc = lib.emu_macchiato_step(DTYPES[dtype], *args, *[ctypes.c_int64(x) for x in (B, H, D, Dv, L, W)],
                                    ctypes.c_float(scale), _ptr(kw), _ptr(vw), _ptr(n), _ptr(m), _ptr(a), _ptr(S),
                                    _ptr(o))
        assert rc == 0, _last_error(lib)
        out.check()
        assert _rel(o, o_ref[:, t]) < tol, t
        n = (n + 1).clamp_max(W).to(torch.int32)   # the caller's advance (the binding does it in place)
    assert torch.equal(n, n_ref)
    assert not torch.isnan(kw).any() and not torch.isnan(vw).any()
    if W:
        assert _rel(kw, kw_ref) < 1e-6 and _rel(vw, vw_ref) < 1e-6
    c = _rescale(m, m_ref)
    assert _rel(a.to(F64) * c, a_ref) < 2e-5 and _rel(S.to(F64) * c.unsqueeze(-1), S_ref) < 2e-5
