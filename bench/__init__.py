"""flashts benchmark harness: ``python -m bench`` (see ``python -m bench --help``).

* :mod:`bench.registry` — what to run: per-op shape configurations (GPU, CPU, quick), input makers,
  the FLOP / minimal-byte count of every case, and the flashts backends as implementations.
* :mod:`bench.baselines` — peer implementations (PyTorch SDPA, FlexAttention, flash-linear-attention,
  the original Autoformer code), each wrapped to take flashts-layout inputs prepared outside the timing.
* :mod:`bench.runner` — correctness guard, timing (``triton.testing.do_bench`` median on GPU, wall-clock
  median on CPU) and peak memory; one row per op × implementation × mode × dtype × T.
* :mod:`bench.report` — results JSON → markdown tables and log-log PNG plots
  (``python -m bench.report RESULTS.json`` regenerates them).
"""
