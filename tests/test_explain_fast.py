import numpy as np
import pytest
import torch

from torch_imdb.explain.backends import ShapDeepExplainer
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.model import ModelConfig, SentimentRNN


def random_case(E, H, T, N, B, seed):
    torch.manual_seed(seed)
    model = SentimentRNN(ModelConfig(vocab_size=60, embed_dim=E, hidden=H)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.5)
        model.rnn.bias_hh_l0.normal_()
    ids = torch.randint(0, 60, (N, T))
    bg = torch.randint(0, 60, (B, T))
    ids[:, : T // 3] = 0
    bg[: B // 2, : T // 2] = 0
    ids[-1] = bg[0]  # a review identical to a background row: rescale falls back to the gradient
    return model, ids, bg


@pytest.mark.parametrize("E,H,T,N,B", [(4, 3, 1, 2, 3), (8, 6, 7, 4, 5), (12, 10, 15, 3, 6)])
def test_fast_equals_shap_float64(E, H, T, N, B):
    model, ids, bg = random_case(E, H, T, N, B, seed=E)
    ref = ShapDeepExplainer(model, torch.float64).attribute(ids, bg)
    fast = FastDeepShap(model, torch.float64, chunk_pairs=B + 1).attribute(ids, bg)
    assert np.abs(fast.values - ref.values).max() < 1e-10
    assert np.abs(fast.residual).max() < 1e-10
    assert abs(fast.expected_value - ref.expected_value) < 1e-12
    np.testing.assert_allclose(fast.outputs, ref.outputs, atol=1e-12)


def test_fast_equals_shap_float32():
    model, ids, bg = random_case(16, 12, 20, 4, 8, seed=3)
    ref = ShapDeepExplainer(model).attribute(ids, bg)
    fast = FastDeepShap(model).attribute(ids, bg)
    assert np.abs(fast.values - ref.values).max() < 1e-5
    assert np.abs(fast.residual).max() < 1e-5
    assert np.isfinite(fast.values).all()


def test_chunking_and_streaming_do_not_change_values():
    model, ids, bg = random_case(8, 6, 9, 7, 4, seed=5)
    whole = FastDeepShap(model, torch.float64, chunk_pairs=10_000).attribute(ids, bg)
    engine = FastDeepShap(model, torch.float64, chunk_pairs=4)  # one review per chunk
    parts = list(engine.iter_attribute(ids, bg))
    assert [p[0] for p in parts] == list(range(7))
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), whole.values, atol=1e-14)
    # the background trace is cached across calls and refreshed when the background changes
    first = engine._background(bg)
    assert engine._background(bg.clone()) is first
    assert engine._background(bg.flip(0)) is not first


def test_compiled_step_matches_eager():
    """torch.compile fuses the pair step; padding the last chunk must not leak into results."""
    model, ids, bg = random_case(8, 6, 5, 5, 4, seed=7)
    eager = FastDeepShap(model, chunk_pairs=8).attribute(ids, bg)
    compiled = FastDeepShap(model, chunk_pairs=8, compile=True).attribute(ids, bg)  # chunks of 2, last padded
    assert np.abs(compiled.values - eager.values).max() < 1e-6
    np.testing.assert_allclose(compiled.outputs, eager.outputs, atol=1e-7)
