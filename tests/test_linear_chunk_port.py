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
