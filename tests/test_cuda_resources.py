"""CI gate on the compiled CUDA kernels (sm_90, no GPU needed): no register spills, and no kernel loses the
tensor-core (HMMA) or 128-bit-load (LDG.E.128) instructions that ``tests/cuda_resources.EXPECTED`` lists for it.

Compiles every ``csrc/*.cu`` once per session (in parallel; about 30 s on 2 idle cores). Needs nvcc and
cuobjdump/nvdisasm (``.ci/setup.sh`` installs the PyPI wheels when nvcc exists).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cuda_resources as cr  # noqa: E402

_PTXAS = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 2048 bytes smem, 368 bytes cmem[0]
"""
_SASS = """\tcode for sm_90
\t\tFunction : _Z3fooPf
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;            /* 0x... */
        /*0020*/                   LDG.E.128.CONSTANT R8, desc[UR4][R2.64] ;   /* 0x... */
        /*0030*/                   HMMA.16816.F32.BF16 R12, R4, R8, R12 ;      /* 0x... */
        /*0040*/                   LDG.E R3, desc[UR4][R2.64] ;                /* 0x... */
"""


def test_parsers():
    p = cr.parse_ptxas(_PTXAS)["_Z3fooPf"]
    assert p == dict(regs=40, stack=8, spill_stores=4, spill_loads=12, smem=2048)
    s = cr.parse_sass(_SASS)["_Z3fooPf"]
    assert s == dict(hmma=1, ldg128=2, ldgsts=0)
    assert cr.short_name("void flashts::scan::(anonymous namespace)::forward_kernel<(flashts::scan::(anonymous "
                         "namespace)::Kind)1, __nv_bfloat16>(flashts::scan::(anonymous namespace)::Args<"
                         "__nv_bfloat16>, bool)") == "scan::forward_kernel<Latte,bf16>"


@pytest.fixture(scope="module")
def kernels():
    if cr.find_tool("nvcc") is None:
        pytest.skip("nvcc not installed")
    if cr.find_tool("cuobjdump") is None or cr.find_tool("nvdisasm") is None:
        pytest.fail("cuobjdump/nvdisasm not found: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
    rows = cr.collect()
    assert rows, "no kernels compiled"
    return rows


def test_no_spills(kernels):
    bad = [f"{k.name}: {k.spill_stores} B stored, {k.spill_loads} B loaded ({k.regs} regs)" for k in kernels
           if k.spills]
    assert not bad, "register spills:\n" + "\n".join(bad)


def test_every_kernel_listed(kernels):
    names = {k.name for k in kernels}
    assert len(names) == len(kernels), "two kernels print the same name"
    assert not names - set(cr.EXPECTED), f"kernels missing from EXPECTED: {sorted(names - set(cr.EXPECTED))}"
    assert not set(cr.EXPECTED) - names, f"EXPECTED lists kernels that were not compiled: " \
                                         f"{sorted(set(cr.EXPECTED) - names)}"


def test_no_kernel_loses_instructions(kernels):
    lost = []
    for k in kernels:
        want_hmma, want_ldg = cr.EXPECTED.get(k.name, (False, False))
        if want_hmma and not k.hmma:
            lost.append(f"{k.name}: no HMMA/HGMMA (tensor cores) in the SASS")
        if want_ldg and not k.ldg128:
            lost.append(f"{k.name}: no LDG.E.128 in the SASS")
    assert not lost, "\n".join(lost)


def test_cp_async_kernels_keep_ldgsts(kernels):
    lost = [k.name for k in kernels if k.name in cr.EXPECTED_CP_ASYNC and not k.ldgsts]
    assert not lost, "no cp.async (LDGSTS) in the SASS of: " + ", ".join(lost)
