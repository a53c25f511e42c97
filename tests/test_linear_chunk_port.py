"""A host port of the CUDA linear-attention forward's tiling and indexing (csrc/linear_attention.cu,
``fwd_kernel`` + ``carve`` + ``launch``), run on the CPU in float64 and checked against flashts.reference.

The port follows the kernel line by line: one "block" per (sequence n, query head h) with kv head
h // (H / Hk); rows [t0, t0 + len) from cu_seqlens; chunks of C steps with C the largest of {64, 32, 16} whose
shared-memory tiles (each piece rounded up to 128 bytes) fit; head dims padded to multiples of 16 with ZERO
padding (rows past the sequence too: φ(0) = 1 for elu must not leak in); per chunk A = tril(Q̃K̃ᵀ) (diagonal
included), Num = Q̃S + AV, den = Q̃·z + rowsum(A), then S += K̃ᵀV, z += colsum(K̃); non-causal: a first sweep
for the whole-sequence state. Output index ((b·T + t) · H + h) · Dv + e. It checks the algorithm and the index
math that the GPU kernel uses (not the wmma code itself: that is what the GPU tests in test_linear_cuda.py do),
so a change of the chunk loop can be tried here first.
"""
import pytest
import torch

from flashts import reference as ref

F64 = torch.float64
KCHUNKS = (64, 32, 16)
KPAD = 4  # ld_pad<float>()


def _r128(nbytes):
    return (nbytes + 127) // 128 * 128


def carve_bytes(kind, C, Dp, Dvp):
    """csrc/linear_attention.cu carve(): bytes of the float32 tiles of kind 'fwd' | 'bwd_dq' | 'bwd_dkv'."""
    ldD, ldV, ldC = Dp + KPAD, Dvp + KPAD, C + KPAD
    pieces = [C * ldD, C * ldD, C * ldV]                      # Q, K, V
    if kind != "fwd":
        pieces.append(C * ldV)                                # dO
    pieces.append(C * ldC)                                    # A
    if kind != "fwd":
        pieces += [C * ldC, C * ldD]                          # M, X1
    if kind != "bwd_dq":
        pieces.append(C * ldV)                                # X2
    pieces += [Dp * ldV, Dp, C, C]                            # S, z, v1, v2
    return sum(_r128(4 * n) for n in pieces)


def pick_chunk(kind, D, Dv, max_smem):
    Dp, Dvp = -(-D // 16) * 16, -(-Dv // 16) * 16
    for C in KCHUNKS:
        if carve_bytes(kind, C, Dp, Dvp) <= max_smem:
            return C
    return 0


def _phi(x, fmap):
    return ref.linear.feature_map_fn(x, fmap)


def fwd_port(q, k, v, S0, z0, cu, causal, fmap, normalize, scale, eps, C):
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[-1]
    N = B if cu is None else cu.numel() - 1
    Dp, Dvp = -(-D // 16) * 16, -(-Dv // 16) * 16
    o = torch.full((B, T, H, Dv), float("nan"), dtype=F64)
    ST = torch.full((N, H, D, Dv), float("nan"), dtype=F64)
    zT = torch.full((N, H, D), float("nan"), dtype=F64)
    for blk in range(N * H):                                  # gridDim.x = N·H
        n, h = divmod(blk, H)
        hk = h // (H // Hk)
        b, t0, length = (n, 0, T) if cu is None else (0, int(cu[n]), int(cu[n + 1]) - int(cu[n]))
        S = torch.zeros(Dp, Dvp, dtype=F64)
        z = torch.zeros(Dp, dtype=F64)
        if S0 is not None:
            S[:D, :Dv] = S0[n, h]
            z[:D] = z0[n, h]

        def load(src, t_first, head, cols, X, f, rows_valid):
            tile = torch.zeros(C, cols, dtype=F64)
            tile[:rows_valid, :X] = f(src[b, t_first:t_first + rows_valid, head, :X])
            return tile

        fq = lambda x: scale * _phi(x, fmap)  # noqa: E731
        fk = lambda x: _phi(x, fmap)  # noqa: E731
        n_chunks = -(-length // C)
        if not causal:
            for c in range(n_chunks):
                t_first, ln = t0 + c * C, min(C, length - c * C)
                K = load(k, t_first, hk, Dp, D, fk, ln)
                V = load(v, t_first, hk, Dvp, Dv, lambda x: x, ln)
                S += K.T @ V
                z += K.sum(0)
        for c in range(n_chunks):
            t_first, ln = t0 + c * C, min(C, length - c * C)
            Q = load(q, t_first, h, Dp, D, fq, ln)
            Num = Q @ S
            den = Q @ z
            if causal:
                K = load(k, t_first, hk, Dp, D, fk, ln)
                V = load(v, t_first, hk, Dvp, Dv, lambda x: x, ln)
                A = torch.tril(Q @ K.T)                      # s <= t kept
                Num = Num + A @ V
                den = den + A.sum(1)
            out = Num / (den + eps).unsqueeze(1) if normalize else Num
            t_idx = torch.arange(ln)                          # the kernel's flat output index
            flat = (((b * T + t_first + t_idx) * H + h) * Dv).unsqueeze(1) + torch.arange(Dv)
            o.view(-1)[flat.reshape(-1)] = out[:ln, :Dv].reshape(-1)
            if causal:
                S += K.T @ V
                z += K.sum(0)
        ST[n, h] = S[:D, :Dv]
        zT[n, h] = z[:D]
    return o, ST, zT


def test_chunk_choice_at_the_goal_shapes():
    # What the launcher picks (these are facts of the current tile sizes, recorded so that a change is seen).
    h200 = 232448  # cudaDevAttrMaxSharedMemoryPerBlockOptin on sm_90 (227 KB)
    assert [pick_chunk(k, 64, 64, h200) for k in ("fwd", "bwd_dq", "bwd_dkv")] == [64, 64, 64]
    assert [pick_chunk(k, 128, 128, h200) for k in ("fwd", "bwd_dq", "bwd_dkv")] == [64, 32, 32]
    assert carve_bytes("fwd", 64, 128, 128) == 221184  # 216 KB: one block per SM at D = 128
    # 99-100 KB parts (sm_86/sm_89): D = 64 falls back to C = 32; D = 128 does not fit at all (launch error)
    assert [pick_chunk(k, 64, 64, 100 * 1024) for k in ("fwd", "bwd_dq", "bwd_dkv")] == [32, 32, 32]
    assert pick_chunk("fwd", 128, 128, 100 * 1024) == 0


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("C,fmap,normalize", [(64, "elu", True), (32, "elu", True), (16, "elu", True),
                                              (32, "identity", False)])
def test_port_matches_reference(C, causal, fmap, normalize):
    g = torch.Generator().manual_seed(C + causal + normalize)
    B, T, H, Hk, D, Dv = 2, 83, 4, 2, 19, 5
    q, k, v = (torch.randn(B, T, h, d, generator=g, dtype=F64) for h, d in ((H, D), (Hk, D), (Hk, Dv)))
    scale = 1.0 if normalize else D ** -0.5
    state = None
    if causal:
        state = (torch.randn(B, H, D, Dv, generator=g, dtype=F64), torch.rand(B, H, D, generator=g, dtype=F64) + 1)
    o_ref, (S_ref, z_ref) = ref.linear_attention(q, k, v, causal=causal, feature_map=fmap, normalize=normalize,
                                                 scale=scale, initial_state=state, output_final_state=True)
    o, S, z = fwd_port(q, k, v, *(state or (None, None)), None, causal, fmap, normalize, scale, 1e-6, C)
    assert torch.allclose(o, o_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(S, S_ref, rtol=1e-10, atol=1e-10) and torch.allclose(z, z_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
def test_port_packed_sequences(causal):
    g = torch.Generator().manual_seed(7)
    lens = [0, 1, 17, 40, 16, 3]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    T, H, D, Dv = int(cu[-1]), 3, 9, 6
    q, k, v = (torch.randn(1, T, H, d, generator=g, dtype=F64) for d in (D, D, Dv))
    o_ref = ref.linear_attention(q, k, v, causal=causal, cu_seqlens=cu)
    o, _, _ = fwd_port(q, k, v, None, None, cu, causal, "elu", True, 1.0, 1e-6, 16)
    assert torch.allclose(o, o_ref, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------ the chunk-parallel forward (port)
#
# csrc/linear_attention.cu: make_plan (the occupancy rule), carve_chunk, slot_info, and the three kernels
# chunk_state_kernel / state_scan_kernel / chunk_out_kernel, with the workspace [B, NS, H, Dp·(Dvp + 1)] laid out
# as in the kernels (S [Dp][Dvp] then z [Dp] per slot). Each "block" below is one CUDA block of the grid.

KMAX_BV = 64


def carve_chunk_bytes(kind, C, Dp, BV):
    """csrc/linear_attention.cu carve_chunk(): kind 0 = phase 1 (K, V, ΔS), 1 = phase 3 (all tiles)."""
    ldD, ldB, ldC = Dp + KPAD, BV + KPAD, C + KPAD
    if kind == 0:
        pieces = [C * ldD, C * ldB, Dp * ldB]
    else:
        pieces = [C * ldD, C * ldD, C * ldB, C * ldC, Dp * ldB, C * ldB, Dp, C]
    return sum(_r128(4 * n) for n in pieces)


def _ru16(x):
    return -(-x // 16) * 16


def make_plan(B, T, N, H, D, Dv, packed, sms, max_smem, mode="auto"):
    """csrc/linear_attention.cu make_plan(): -> dict(mode, C, BV, NS, seq_blocks, chunk_blocks, workspace_bytes)."""
    Dp, Dvp = _ru16(D), _ru16(Dv)
    bv0 = min(Dvp, KMAX_BV)
    c_one = next((C for C in KCHUNKS if carve_bytes("fwd", C, Dp, Dvp) <= max_smem), 0)
    c_chunk = next((C for C in KCHUNKS if carve_chunk_bytes(1, C, Dp, bv0) <= max_smem
                    and carve_chunk_bytes(0, C, Dp, bv0) <= max_smem), 0)
    seq = N * H
    NS = 0 if c_chunk == 0 else (T // c_chunk + N if packed else -(-T // c_chunk))

    def chunk_blocks(bv):
        return B * NS * H * -(-Dvp // bv)

    if mode == "auto":
        if c_chunk == 0 or seq >= 2 * sms:
            mode = "one_pass"
        elif chunk_blocks(bv0) >= sms and chunk_blocks(bv0) > seq:
            mode = "chunked"
        else:
            mode = "one_pass" if seq >= chunk_blocks(16) else "chunked"
        if c_one == 0:
            mode = "chunked"
    bv = bv0
    if mode == "chunked":
        while chunk_blocks(bv) < sms and bv > 16:
            bv = _ru16(bv // 2)
    return dict(mode=mode, C=c_one if mode == "one_pass" else c_chunk, BV=bv, NS=NS if mode == "chunked" else 0,
                seq_blocks=seq, chunk_blocks=chunk_blocks(bv),
                workspace_bytes=B * NS * H * Dp * (Dvp + 1) * 4 if mode == "chunked" else 0)


def slot_info(cu, N, T, C, b, slot):
    """csrc/linear_attention.cu slot_info(): -> (n, t_first, len, base) of chunk slot `slot` of batch row b."""
    if cu is not None:
        lo, hi = 0, N
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if int(cu[mid]) // C + mid <= slot:
                lo = mid
            else:
                hi = mid
        bos, eos = int(cu[lo]), int(cu[lo + 1])
        base = bos // C + lo
        t_first = bos + (slot - base) * C
        ln = 0 if slot < base else min(eos - t_first, C)
        return lo, t_first, ln, base
    return b, slot * C, min(T - slot * C, C), 0


def fwd_chunked_port(q, k, v, S0, z0, cu, causal, fmap, normalize, scale, eps, C, BV):
    B, T, H, D = q.shape
    Hk, Dv = k.shape[2], v.shape[-1]
    N = B if cu is None else cu.numel() - 1
    Dp, Dvp = _ru16(D), _ru16(Dv)
    NS = T // C + N if cu is not None else -(-T // C)
    nBV = -(-Dvp // BV)
    Ep = Dp * (Dvp + 1)
    ws = torch.full((B * NS * H * Ep,), float("nan"), dtype=F64)    # the workspace is never pre-cleared
    o = torch.full((B, T, H, Dv), float("nan"), dtype=F64)
    ST = torch.full((N, H, D, Dv), float("nan"), dtype=F64)
    zT = torch.full((N, H, D), float("nan"), dtype=F64)
    fq = lambda x: scale * _phi(x, fmap)  # noqa: E731
    fk = lambda x: _phi(x, fmap)  # noqa: E731

    def load(src, b, t_first, head, cols, col0, f, ln):               # load_tile (zero padding)
        tile = torch.zeros(C, cols, dtype=F64)
        X = min(src.shape[-1] - col0, cols)
        tile[:ln, :X] = f(src[b, t_first:t_first + ln, head, col0:col0 + X])
        return tile

    def cell(b, slot, h):
        off = ((b * NS + slot) * H + h) * Ep
        return ws[off:off + Dp * Dvp].view(Dp, Dvp), ws[off + Dp * Dvp:off + Ep]

    blocks = B * NS * H * nBV
    for blk in range(blocks):                                        # phase 1: chunk_state_kernel
        tile, rest = blk % nBV, blk // nBV
        h, rest = rest % H, rest // H
        slot, b = rest % NS, rest // NS
        _, t_first, ln, _ = slot_info(cu, N, T, C, b, slot)
        if ln <= 0:
            continue
        hk, e0 = h // (H // Hk), tile * BV
        K = load(k, b, t_first, hk, Dp, 0, fk, ln)
        V = load(v, b, t_first, hk, BV, e0, lambda x: x, ln)
        S_cell, z_cell = cell(b, slot, h)
        if tile == 0:
            z_cell[:] = K[:ln].sum(0)
        w = min(BV, Dvp - e0)
        S_cell[:, e0:e0 + w] = (K.T @ V)[:, :w]
    for row in range(N * H):                                         # phase 2: state_scan_kernel (all threads)
        n, h = divmod(row, H)
        b, ln, base = (n, T, 0) if cu is None else (0, int(cu[n + 1]) - int(cu[n]), int(cu[n]) // C + n)
        run = torch.zeros(Ep, dtype=F64)
        if S0 is not None:
            run[:Dp * Dvp].view(Dp, Dvp)[:D, :Dv] = S0[n, h]
            run[Dp * Dvp:Dp * Dvp + D] = z0[n, h]
        n_chunks = -(-ln // C)
        for c in range(n_chunks):
            off = ((b * NS + base + c) * H + h) * Ep
            x = ws[off:off + Ep].clone()
            if causal:
                ws[off:off + Ep] = run
            run = run + x
        if not causal and n_chunks > 0:
            off = ((b * NS + base) * H + h) * Ep
            ws[off:off + Ep] = run
        ST[n, h] = run[:Dp * Dvp].view(Dp, Dvp)[:D, :Dv]
        zT[n, h] = run[Dp * Dvp:Dp * Dvp + D]
    for blk in range(blocks):                                        # phase 3: chunk_out_kernel
        tile, rest = blk % nBV, blk // nBV
        h, rest = rest % H, rest // H
        slot, b = rest % NS, rest // NS
        _, t_first, ln, base = slot_info(cu, N, T, C, b, slot)
        if ln <= 0:
            continue
        hk, e0 = h // (H // Hk), tile * BV
        Q = load(q, b, t_first, h, Dp, 0, fq, ln)
        S_cell, z_cell = cell(b, slot if causal else base, h)
        S = torch.zeros(Dp, BV, dtype=F64)
        w = min(BV, Dvp - e0)
        S[:, :w] = S_cell[:, e0:e0 + w]
        Num = Q @ S
        den = Q @ z_cell
        if causal:
            K = load(k, b, t_first, hk, Dp, 0, fk, ln)
            V = load(v, b, t_first, hk, BV, e0, lambda x: x, ln)
            A = torch.tril(Q @ K.T)
            Num = Num + A @ V
            den = den + A.sum(1)
        out = Num / (den + eps).unsqueeze(1) if normalize else Num
        cols = min(Dv - e0, BV)
        o[b, t_first:t_first + ln, h, e0:e0 + cols] = out[:ln, :cols]
    return o, ST, zT


def test_plan_at_the_goal_shapes():
    """The occupancy rule picks the chunk-parallel forward at the goal shapes (B=4, H=16, T=8192) and one pass
    only when N·H ≥ 2·SMs; the grids and workspaces recorded here are the README's numbers."""
    h200, sms = 232448, 132
    p64 = make_plan(4, 8192, 4, 16, 64, 64, False, sms, h200)
    assert (p64["mode"], p64["C"], p64["BV"], p64["NS"], p64["chunk_blocks"]) == ("chunked", 64, 64, 128, 8192)
    assert p64["workspace_bytes"] == 4 * 128 * 16 * 64 * 65 * 4                  # 34 MB (D = 128: 541 MB)
    p128 = make_plan(4, 8192, 4, 16, 128, 128, False, sms, h200)
    assert (p128["mode"], p128["C"], p128["BV"], p128["chunk_blocks"]) == ("chunked", 64, 64, 16384)
    assert carve_chunk_bytes(1, 64, 64, 64) == 104960 and carve_chunk_bytes(1, 64, 128, 64) == 155392
    assert make_plan(64, 96, 64, 8, 64, 64, False, sms, h200)["mode"] == "one_pass"   # N·H = 512 ≥ 264
    tiny = make_plan(1, 40, 1, 2, 64, 64, False, sms, h200)                           # splits Dv to 16
    assert (tiny["mode"], tiny["BV"]) == ("chunked", 16)
    assert make_plan(1, 40, 1, 2, 40, 40, True, sms, h200)["NS"] == 40 // 64 + 1


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("C,BV,fmap,normalize", [(64, 64, "elu", True), (16, 16, "elu", True),
                                                 (32, 32, "identity", False), (16, 48, "relu", True)])
def test_chunked_port_matches_reference(C, BV, causal, fmap, normalize):
    g = torch.Generator().manual_seed(C + BV + causal)
    B, T, H, Hk, D, Dv = 2, 53, 2, 1, 19, 37
    q, k, v = (torch.randn(B, T, h, d, generator=g, dtype=F64) for h, d in ((H, D), (Hk, D), (Hk, Dv)))
    scale = 1.0 if normalize else D ** -0.5
    state = (torch.randn(B, H, D, Dv, generator=g, dtype=F64), torch.rand(B, H, D, generator=g, dtype=F64) + 1)
    o_ref, (S_ref, z_ref) = ref.linear_attention(q, k, v, causal=causal, feature_map=fmap, normalize=normalize,
                                                 scale=scale, initial_state=state, output_final_state=True)
    o, S, z = fwd_chunked_port(q, k, v, *state, None, causal, fmap, normalize, scale, 1e-6, C, BV)
    assert torch.allclose(o, o_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(S, S_ref, rtol=1e-10, atol=1e-10) and torch.allclose(z, z_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_port_packed_sequences(causal):
    g = torch.Generator().manual_seed(11)
    lens = [0, 1, 17, 40, 16, 3, 0, 33]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
    T, H, D, Dv = int(cu[-1]), 3, 9, 6
    q, k, v = (torch.randn(1, T, H, d, generator=g, dtype=F64) for d in (D, D, Dv))
    N = len(lens)
    state = (torch.randn(N, H, D, Dv, generator=g, dtype=F64), torch.rand(N, H, D, generator=g, dtype=F64) + 1)
    o_ref, (S_ref, z_ref) = ref.linear_attention(q, k, v, causal=causal, cu_seqlens=cu, initial_state=state,
                                                 output_final_state=True)
    o, S, z = fwd_chunked_port(q, k, v, *state, cu, causal, "elu", True, 1.0, 1e-6, 16, 16)
    assert torch.allclose(o, o_ref, rtol=1e-10, atol=1e-10)
    assert torch.allclose(S, S_ref, rtol=1e-10, atol=1e-10) and torch.allclose(z, z_ref, rtol=1e-10, atol=1e-10)
