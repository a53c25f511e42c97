"""The ``triton`` backend of prob_sparse_attention (SPEC §6) against flashts.reference.

Without a GPU the kernels run under the Triton interpreter (tests/conftest.py), so shapes are small and the
tiles are 16 (``BLOCKS`` sets other tiles): u > 16 active rows span several row blocks, L_K > 16 keys several key
blocks with a ragged last one. Covered: outputs, returned indices and q/k/v gradients in float32/float16/
bfloat16; causal (per-row key limit, cumulative-sum lazy rows, reversed-sum dV) and non-causal (mean), L_Q != L_K,
GQA/MQA, odd head dims (5, 7); u = 0 (L = 1, L_K = 1), every row active, factor 1; ±1e4 logits; non-contiguous
inputs; the same result as the torch backend on the same seed; float64 refused. Output buffers are NaN-poisoned,
so a row that neither the active nor the lazy programs write fails.
"""
from __future__ import annotations

import pytest
import torch

import flashts
from helpers import backends_for, check_against_reference, device_for
from test_prob_sparse import huge_logits_check, index_for, qkv

OP = "prob_sparse_attention"
BACKEND = "triton"
if BACKEND not in backends_for(OP):
    pytest.skip("triton backend unavailable here (needs triton, and a GPU or TRITON_INTERPRET=1)",
                allow_module_level=True)

from flashts.kernels import prob_sparse as kernels  # noqa: E402  (imports triton)

DEV = device_for(BACKEND)

# (B, L_Q, L_K, H, Hk, D, Dv, causal, factor, dtype)
CASES = {
    "causal-gqa-f32": (1, 40, 40, 2, 1, 8, 5, True, 5, torch.float32),
    "causal-odd-bf16": (1, 33, 33, 1, 1, 5, 7, True, 5, torch.bfloat16),
    "causal-f16": (1, 50, 50, 1, 1, 16, 16, True, 3, torch.float16),
    "LQ17-LK45-mqa-f16": (1, 17, 45, 2, 1, 16, 16, False, 5, torch.float16),
    "LQ40-LK20-f32": (1, 40, 20, 2, 2, 5, 7, False, 5, torch.float32),
    "noncausal-bf16": (1, 40, 40, 1, 1, 8, 8, False, 5, torch.bfloat16),
    "all-active-f32": (2, 12, 12, 2, 2, 4, 4, True, 5, torch.float32),
    "L1-f32": (2, 1, 1, 2, 2, 4, 4, True, 5, torch.float32),
    "L2-factor1-f32": (1, 2, 2, 2, 1, 8, 3, False, 1, torch.float32),
    "LK1-f32": (1, 9, 1, 2, 2, 4, 4, False, 5, torch.float32),
}


@pytest.mark.parametrize("case", list(CASES))
def test_against_reference(case):
    B, LQ, LK, H, Hk, D, Dv, causal, factor, dtype = CASES[case]
    check_against_reference(OP, BACKEND, qkv(B, LQ, LK, H, Hk, D, Dv),
                            dict(factor=factor, causal=causal, sample_index=index_for(LQ, LK, factor),
                                 return_index=True), dtype=dtype)


def test_other_tiles(monkeypatch):
    """32 active rows per block, 16 keys: one row block holds all u = 20 rows, ragged key blocks."""
    monkeypatch.setattr(kernels, "BLOCKS", (32, 16))
    check_against_reference(OP, BACKEND, qkv(1, 40, 40, 2, 1, 8, 8), dict(causal=True, sample_index=index_for(40, 40)))


def test_huge_logits():
    huge_logits_check(BACKEND, torch.float32, device=DEV)


def test_same_as_torch_backend_on_one_seed():
    q, k, v = (x.float() for x in qkv(2, 30, 30, 2, 2, 8, 8))
    outs = []
    for backend in ("torch", BACKEND):
        torch.manual_seed(3)
        o, idx = flashts.prob_sparse_attention(q.to(DEV), k.to(DEV), v.to(DEV), causal=True, return_index=True,
                                               backend=backend)
        outs.append((o.cpu(), idx.cpu()))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(outs[1][1], outs[0][1])


def test_non_contiguous():
    q, k, v = (x.float().to(DEV) for x in qkv(2, 20, 20, 2, 2, 8, 8))
    qt, kt, vt = (x.transpose(0, 1).contiguous().transpose(0, 1) for x in (q, k, v))
    si = index_for(20, 20)
    a = flashts.prob_sparse_attention(qt, kt, vt, sample_index=si, backend=BACKEND)
    b = flashts.prob_sparse_attention(q, k, v, sample_index=si, backend=BACKEND)
    torch.testing.assert_close(a, b)


def test_float64_refused():
    q, k, v = qkv(1, 8, 8, 1, 1, 4, 4)
    with pytest.raises(TypeError, match="float64"):
        flashts.prob_sparse_attention(q.to(DEV), k.to(DEV), v.to(DEV), backend=BACKEND)
