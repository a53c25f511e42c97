"""Shared test machinery: compare one backend of one op with ``flashts.reference``.

``check_against_reference(op, backend, args, kwargs, dtype=...)`` runs the op on inputs rounded to
``dtype`` and the reference on the *same rounded values* upcast to float64, then compares every floating
output and every gradient (from one random cotangent per output) by relative error
``‖x − ref‖ / ‖ref‖``. Kernel issues add cases, not machinery.
"""
from __future__ import annotations

import torch

import flashts
from flashts import _backend, reference

# relative-error tolerance of a backend run in dtype against the float64 reference
TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}

STATE_DTYPE = {torch.float64: torch.float64}


def backends_for(op: str, interpreted: bool = True) -> list[str]:
    """Backends implementing ``op`` that can run here (torch; triton under the interpreter; cuda on a GPU).

    ``interpreted=False`` leaves out Triton when it would run under the CPU interpreter: the broad per-op test
    files use it (the interpreter is too slow for their hundreds of cases), while ``tests/test_<op>_triton.py``
    covers every option of the Triton kernels at interpreter-sized shapes. On a GPU both include Triton.
    """
    out = []
    for b in _backend.implemented(op):
        dev = device_for(b)
        if not interpreted and b == "triton" and dev.type == "cpu":
            continue
        if _backend.available(b, dev):
            out.append(b)
    return sorted(out, key=("torch", "triton", "cuda").index)


def device_for(backend: str) -> torch.device:
    if backend in ("triton", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    den = ref.norm().item()
    num = (x - ref).norm().item()
    if den == 0.0:
        return num
    return num / den


def _flatten(obj, path=""):
    """Yield (path, leaf) for tensors / None in nested tuples, lists and dicts."""
    if isinstance(obj, (tuple, list)):
        for i, x in enumerate(obj):
            yield from _flatten(x, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for key, x in obj.items():
            yield from _flatten(x, f"{path}.{key}" if path else key)
    else:
        yield path, obj


def _rebuild(obj, fn, path=""):
    if isinstance(obj, tuple):
        return tuple(_rebuild(x, fn, f"{path}[{i}]") for i, x in enumerate(obj))
    if isinstance(obj, list):
        return [_rebuild(x, fn, f"{path}[{i}]") for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        return {key: _rebuild(x, fn, f"{path}.{key}" if path else key) for key, x in obj.items()}
    return fn(path, obj)


def run_op(op: str, backend: str, args: tuple, kwargs: dict):
    return getattr(flashts, op)(*args, **kwargs, backend=backend)


def check_against_reference(op: str, backend: str, args: tuple, kwargs: dict | None = None, *,
                            dtype: torch.dtype = torch.float32, tol: float | None = None, grad: bool = True,
                            skip_grad_inputs: tuple[str, ...] = (), skip_grad_outputs: tuple[str, ...] = (),
                            device: torch.device | str | None = None, out_tol: float | None = None):
    """Compare ``flashts.<op>(*args, **kwargs, backend=backend)`` with ``flashts.reference.<op>``.

    * ``args`` (q, k, v) are cast to ``dtype``; floating tensors in ``kwargs`` (states) to float32
      (float64 when ``dtype`` is float64); integer tensors (``cu_seqlens``) go as they are.
    * ``skip_grad_inputs``: input paths that carry no gradient (e.g. ``"initial_state[0]"``, a max).
    * ``skip_grad_outputs``: output paths given no cotangent (e.g. ``"[1][0]"``, the final max).
    Returns the dict of relative errors (for reporting).
    """
    kwargs = dict(kwargs or {})
    device = torch.device(device) if device is not None else device_for(backend)
    tol = TOL[dtype] if tol is None else tol
    out_tol = tol if out_tol is None else out_tol
    sdt = STATE_DTYPE.get(dtype, torch.float32)

    def prep(path, x, to_dtype):
        if not isinstance(x, torch.Tensor):
            return x
        x = x.detach().to(device)
        if not x.is_floating_point():
            return x
        return x.to(to_dtype)

    op_args = _rebuild(args, lambda p, x: prep(p, x, dtype), "args")
    op_kwargs = _rebuild(kwargs, lambda p, x: prep(p, x, sdt), "")

    def leaf(path, x, to_dtype=None):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return x
        x = x.detach().clone() if to_dtype is None else x.detach().to(to_dtype).clone()
        if grad and path not in skip_grad_inputs:
            x.requires_grad_(True)
        return x

    mine_args = _rebuild(op_args, lambda p, x: leaf(p.replace("args", "", 1) or p, x), "args")
    mine_kwargs = _rebuild(op_kwargs, lambda p, x: leaf(p, x), "")
    ref_args = _rebuild(op_args, lambda p, x: leaf(p.replace("args", "", 1) or p, x, torch.float64), "args")
    ref_kwargs = _rebuild(op_kwargs, lambda p, x: leaf(p, x, torch.float64), "")

    mine = run_op(op, backend, mine_args, mine_kwargs)
    ref = getattr(reference, op)(*ref_args, **ref_kwargs)
    errors = {}
    mine_out, ref_out = dict(_flatten(mine)), dict(_flatten(ref))
    assert mine_out.keys() == ref_out.keys(), f"output structure differs: {mine_out.keys()} vs {ref_out.keys()}"
    for path, r in ref_out.items():
        m = mine_out[path]
        if r is None:
            assert m is None, f"output{path}: expected None"
            continue
        assert m.shape == r.shape, f"output{path}: shape {tuple(m.shape)} != reference {tuple(r.shape)}"
        if not r.is_floating_point():
            assert torch.equal(m.cpu(), r.cpu()), f"output{path}: integer values differ\n{m}\nvs\n{r}"
            continue
        if path == "" or path == "[0]":
            assert m.dtype == dtype, f"output{path}: dtype {m.dtype}, expected the input dtype {dtype}"
        assert torch.isfinite(m).all(), f"output{path}: non-finite values ({backend}, {dtype})"
        e = rel_err(m, r)
        errors[f"out{path}"] = e
        assert e <= out_tol, f"output{path}: relative error {e:.3e} > {out_tol:.1e} ({op}, {backend}, {dtype})"
    if not grad:
        return errors

    mine_loss, ref_loss = 0.0, 0.0
    for path, r in ref_out.items():
        if r is None or not r.is_floating_point() or path in skip_grad_outputs:
            continue
        g = torch.randn(r.shape, dtype=torch.float64, device=device)
        mine_loss = mine_loss + (mine_out[path].double() * g).sum()
        ref_loss = ref_loss + (r * g).sum()
    mine_leaves = [(p, x) for p, x in _flatten((mine_args, mine_kwargs)) if isinstance(x, torch.Tensor) and x.requires_grad]
    ref_leaves = [(p, x) for p, x in _flatten((ref_args, ref_kwargs)) if isinstance(x, torch.Tensor) and x.requires_grad]
    mine_grads = torch.autograd.grad(mine_loss, [x for _, x in mine_leaves], allow_unused=True)
    ref_grads = torch.autograd.grad(ref_loss, [x for _, x in ref_leaves], allow_unused=True)
    for (path, x), gm, gr in zip(mine_leaves, mine_grads, ref_grads):
        if gr is None:
            gr = torch.zeros_like(x, dtype=torch.float64)
        assert gm is not None, f"grad of input {path}: backend {backend} returned no gradient"
        assert gm.shape == x.shape, f"grad of input {path}: shape {tuple(gm.shape)} != {tuple(x.shape)}"
        assert torch.isfinite(gm).all(), f"grad of input {path}: non-finite values ({backend}, {dtype})"
        e = rel_err(gm, gr)
        errors[f"grad{path}"] = e
        assert e <= tol, f"grad of input {path}: relative error {e:.3e} > {tol:.1e} ({op}, {backend}, {dtype})"
    return errors


def randn(*shape, dtype=torch.float64, device="cpu", scale=1.0):
    return torch.randn(*shape, dtype=dtype, device=device) * scale
