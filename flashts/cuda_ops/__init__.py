"""The ``cuda`` backend: CUDA C++ kernels from ``csrc/`` compiled into ``flashts._C``.

Each module implements the ``<op>_fwd`` / ``<op>_bwd`` pair documented in ``flashts/ops/<op>.py`` by calling
``flashts._C`` (imported lazily, so this package imports on machines without the extension) and uses torch
only for cheap glue: FFTs (cuFFT), top-K and softmax on ``[B, K]``, output allocation with
:func:`flashts.ops._common.new_empty` (NaN-poisoned under the tests, so unwritten elements are caught).
"""
from __future__ import annotations

import importlib

from .. import _backend


def extension():
    """``flashts._C``, or a RuntimeError that says how to build it."""
    try:
        return importlib.import_module("flashts._C")
    except ImportError as exc:
        raise RuntimeError(f"backend 'cuda' needs the compiled extension flashts._C; {_backend.BUILD_HINT}") from exc
