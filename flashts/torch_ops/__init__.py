"""The ``torch`` backend: practical PyTorch, O(T) memory (never a T×T tensor), explicit backward.

Each module implements the ``<op>_fwd`` / ``<op>_bwd`` pair documented in ``flashts/ops/<op>.py``.
Gradients are written out by hand (no autograd inside), so the same functions serve as custom-op
kernels under ``torch.compile`` and as the baseline every GPU kernel must beat.
"""
