"""A user's script that calls every public op and layer of flashts (tests/test_packaging.py runs it, and checks
it with ``mypy --strict``: the public API is annotated and ships ``py.typed``)."""
import torch

import flashts
import flashts.nn


def main() -> None:
    q, k, v = (torch.randn(1, 8, 2, 4) for _ in range(3))
    o: torch.Tensor = flashts.linear_attention(q, k, v, causal=True, feature_map="elu")
    o2, state = flashts.linear_attention(q, k, v, output_final_state=True)
    o3: torch.Tensor = flashts.linear_attention(q, k, v, initial_state=state)
    s: torch.Tensor = flashts.sliding_window_attention(q, k, v, window=(3, 0), scale=0.5)
    s2, lse = flashts.sliding_window_attention(q, k, v, window=(1, 1), return_lse=True)
    a: torch.Tensor = flashts.auto_correlation(q, k, v, factor=1.0, mode="infer")
    r: torch.Tensor = flashts.aaren_attention(torch.randn(2, 4), k, v)
    lt: torch.Tensor = flashts.latte_attention(q, k, v, causal=False)
    ps: torch.Tensor = flashts.prob_sparse_attention(q, k, v, factor=2, causal=True)
    mc: torch.Tensor = flashts.latte_macchiato_attention(q, k, v, torch.randn(1, 8, 2, 3), torch.randn(1, 8, 2, 2),
                                                         window=(3, 0))
    info: dict[str, object] = flashts.backend_info()
    tuned: dict[object, object] = flashts.warmup(["linear_attention"], B=1, H=1, T=16, D=4, device="cpu",
                                                 backend="torch")
    x = torch.randn(1, 8, 16)
    layers: list[torch.nn.Module] = [
        flashts.nn.LinearAttention(d_model=16, n_heads=2),
        flashts.nn.SlidingWindowAttention(d_model=16, n_heads=2, window=(3, 0)),
        flashts.nn.AutoCorrelationAttention(d_model=16, n_heads=2, factor=1.0),
        flashts.nn.Aaren(d_model=16, n_heads=2),
        flashts.nn.Latte(d_model=16, n_heads=2, n_latents=4),
        flashts.nn.LatteMacchiato(d_model=16, n_heads=2, n_latents=2, window=(3, 0)),
    ]
    ys = [layer(x) for layer in layers]
    inners: list[torch.nn.Module] = [
        flashts.nn.LinearInnerAttention(False, 5),
        flashts.nn.SlidingWindowInnerAttention(True, window=(3, 0)),
        flashts.nn.AarenInnerAttention(True, n_heads=2, d_keys=8),
        flashts.nn.AarenInnerAttention(False, query="mean"),
        flashts.nn.LatteInnerAttention(False),
    ]
    for inner in inners:
        y, attn = flashts.nn.AttentionLayer(inner, 16, 2)(x, x, x, None)
    for corr in (flashts.nn.AutoCorrelation(False, 1), flashts.nn.TSLibAutoCorrelation(False, 1)):
        y2, _ = flashts.nn.AutoCorrelationLayer(corr, 16, 2)(x, x, x, None)
    print(o.shape, o2.shape, o3.shape, s.shape, s2.shape, lse.shape, a.shape, r.shape, lt.shape, ps.shape, mc.shape, len(info), len(tuned),
          len(ys), y.shape, y2.shape)


if __name__ == "__main__":
    main()
