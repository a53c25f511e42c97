"""Packed sequences for the reference: run the op once per sequence of ``cu_seqlens`` and stitch results."""
import torch


def per_sequence(fn, cu_seqlens, timed, state, want_state: bool):
    """``fn(*timed_slices, state_n)`` -> ``o`` or ``(o, state_n_final)`` for each sequence n.

    ``timed``: tensors ``[1, T, ...]`` sliced along time; ``state``: tuple of ``[N, ...]`` tensors or None.
    Returns ``o`` concatenated along time, and the final states stacked along the first dim.
    """
    bounds = [int(x) for x in cu_seqlens.tolist()]
    outs, finals = [], []
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        st = None if state is None else tuple(s[n:n + 1] for s in state)
        res = fn(*(t[:, a:b] for t in timed), st)
        if want_state:
            o, fin = res
            finals.append(fin)
        else:
            o = res
        outs.append(o)
    o = torch.cat(outs, dim=1)
    if not want_state:
        return o
    return o, tuple(torch.cat(parts, dim=0) for parts in zip(*finals))
