import numpy as np
import pytest
import torch

from conftest import MATRIX, UserModel, case_id, matrix_case, random_inputs, scaled
from torch_imdb.explain.backends import ShapDeepExplainer
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.explain.stack import padded_rows
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
    assert [p[0].tolist() for p in parts] == [[k] for k in range(7)]
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), whole.values, atol=1e-14)
    # the background trace is cached across calls and refreshed when the background changes
    first = engine._background(bg)
    assert engine._background(bg.clone()) is first
    assert engine._background(bg.flip(0)) is not first


@pytest.mark.parametrize("case", [("lstm", 2, True, True, "logits"), ("gru", 2, True, False, "identity")], ids=case_id)
def test_compiled_windows_match_eager(case):
    """Compiled windows of 2 steps (and a last one of 1) through stacked bidirectional layers: the eager values."""
    model, x, bg, target = matrix_case(case, n=3, b=4)
    model = model.float()
    x, bg = (x, bg) if case[3] else (x.float(), bg.float())
    eager = fast_for(model, block_steps=2).attribute(x, bg, target=target)
    compiled = fast_for(model, block_steps=2, compile=True).attribute(x, bg, target=target)
    assert np.abs(compiled.values - eager.values).max() < 1e-6
    assert np.abs(compiled.residual).max() < 1e-5


def test_compiled_step_matches_eager():
    """torch.compile fuses the pair step; padding the last chunk must not leak into results."""
    model, ids, bg = random_case(8, 6, 5, 5, 4, seed=7)
    eager = FastDeepShap(model, chunk_pairs=8).attribute(ids, bg)
    compiled = FastDeepShap(model, chunk_pairs=8, compile=True).attribute(ids, bg)  # chunks of 2, last padded
    assert np.abs(compiled.values - eager.values).max() < 1e-6
    np.testing.assert_allclose(compiled.outputs, eager.outputs, atol=1e-7)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_values_do_not_depend_on_the_batch(compile):
    """A review gets the same float32 values whichever reviews share its call (the runners batch differently)."""
    model, ids, bg = random_case(32, 64, 12, 13, 5, seed=11)
    engine = FastDeepShap(model, chunk_pairs=40, compile=compile)  # chunks of 8 reviews
    whole = engine.attribute(ids, bg).values
    parts = np.concatenate([engine.attribute(ids[a:b], bg).values for a, b in [(0, 1), (1, 6), (6, 13)]])
    assert np.array_equal(whole, parts)


def test_compiled_chunks_are_padded_to_few_sizes():
    """A short compiled chunk runs padded to per_chunk / 2**k: few shapes to compile, under half wasted."""
    for per_chunk in (1, 7, 20, 204):
        sizes = [padded_rows(n, per_chunk) for n in range(1, per_chunk + 1)]
        assert all(n <= s <= per_chunk and s < 2 * n + 1 for n, s in zip(range(1, per_chunk + 1), sizes))
        assert len(set(sizes)) <= per_chunk.bit_length() + 1
    assert padded_rows(10, 20) == 10  # 10 reviews against 100 backgrounds: no padding
    assert padded_rows(20, 20) == 20 and padded_rows(11, 20) == 20


def products_run(monkeypatch) -> list[tuple[int, int, int]]:
    """The (M, K, N) of every product the multiplier backward runs from now on (cells' and stack's ``product``)."""
    from torch_imdb.explain import cells, stack

    run = []

    def recording(a, w_t):
        run.append((a.reshape(-1, a.shape[-1]).shape[0], *w_t.shape[::-1]))
        return a @ w_t.t()

    for module in (cells, stack):
        monkeypatch.setattr(module, "product", recording)
    return run


@pytest.mark.parametrize("case,compile", [(("lstm", 2, True, True, "logits"), False),
                                          (("gru", 2, False, False, "identity"), False),
                                          (("rnn_tanh", 1, True, True, "sigmoid"), False),
                                          (("gru", 2, True, False, "identity"), True)],
                         ids=lambda v: case_id(v) if isinstance(v, tuple) else ("compiled" if v else "eager"))
def test_the_recorded_products_are_the_products_run(case, compile, monkeypatch):
    """recorded_products lists exactly the matrix products the multiplier backward runs (the benchmark's floor
    counts them): 5 inputs in chunks of 2 (compiled: the last chunk padded), windows of 2 steps over 5."""
    from torch_imdb.explain import stack

    model, x, bg, target = matrix_case(case, n=5, b=4)
    model = model.float()
    x, bg = (x, bg) if case[3] else (x.float(), bg.float())
    run = products_run(monkeypatch)
    torch._dynamo.reset()  # a graph compiled by another test calls the product it was traced with
    engine = fast_for(model, block_steps=2, chunk_pairs=8, compile=compile)
    with stack.recorded_products() as plan:
        engine.attribute(x, bg, target=target)
    assert sorted(run) == sorted(plan)
    assert len(plan) > 0 and (compile or len(plan) == len(run))


OUTPUT = {"sigmoid": "sigmoid", "logits": "logits", "identity": "identity"}


def fast_for(model, **options):
    return FastDeepShap.from_parts(model.rnn, model.fc, model.embedding, OUTPUT[model_head(model)], **options)


def model_head(model) -> str:
    if isinstance(model.out, torch.nn.Sigmoid):
        return "sigmoid"
    return "logits" if model.fc.out_features == 3 else "identity"


@pytest.mark.parametrize("case", MATRIX, ids=case_id)
def test_matrix_fast_equals_shap(case):
    """Every cell x layers x direction x input x head: the fast engine gives shap's values on the twin."""
    tokens = case[3]
    model, x, bg, target = matrix_case(case, n=3, b=4)
    x[-1] = bg[0]  # an input equal to a background row: rescale falls back to the gradient
    ref = ShapDeepExplainer(model, torch.float64).attribute(x, bg, target=target)
    # chunks of 1 input; windows of 2 steps over T=5 (2, 2, 1): the windowed pass against shap
    fast = fast_for(model, dtype=torch.float64, chunk_pairs=5, block_steps=2).attribute(x, bg, target=target)
    assert fast.values.shape == ref.values.shape
    assert np.abs(fast.values - ref.values).max() < 1e-10
    assert np.abs(fast.residual).max() < 1e-10
    assert abs(fast.expected_value - ref.expected_value) < 1e-12
    np.testing.assert_allclose(fast.outputs, ref.outputs, atol=1e-12)
    # float32, as users run it: the same as shap in float32. Not to 1e-5 everywhere: where an input
    # and a reference differ by just over shap's rescale threshold (|dz| slightly above 1e-6), the
    # multiplier dy/dz divides float32 rounding noise by dz, in both engines differently. Over this
    # matrix the largest difference is 4.2e-5 (one case), every other case is below 6e-7.
    model32 = model.float()
    x32, bg32 = (x, bg) if tokens else (x.float(), bg.float())
    fast32 = fast_for(model32).attribute(x32, bg32, target=target)
    ref32 = ShapDeepExplainer(model32).attribute(x32, bg32, target=target)
    diff = np.abs(fast32.values - ref32.values)
    assert diff.max() < 1e-4


def test_unsupported_models_name_the_transform():
    from torch_imdb.errors import UsageError

    from torch_imdb.errors import ShapeRefusal
    from torch_imdb.explain.fast import model_parts

    with pytest.raises(ShapeRefusal, match="built around an nn.LSTM"):  # the shortcuts; the engine takes its
        model_parts(torch.nn.Sequential(torch.nn.Linear(2, 1)), torch.float32)  # general path then
    assert FastDeepShap(torch.nn.Sequential(torch.nn.Linear(2, 1))).general is not None
    with pytest.raises(UsageError, match="proj_size.*through the transform"):
        FastDeepShap.from_parts(torch.nn.LSTM(4, 3, proj_size=2), torch.nn.Linear(2, 1))
    two = torch.nn.Sequential(torch.nn.LSTM(4, 3), torch.nn.GRU(3, 3))
    with pytest.raises(ShapeRefusal, match="one nn.LSTM / nn.GRU / nn.RNN module, this one has 2"):
        model_parts(two, torch.float32)
    rnn = torch.nn.GRU(4, 3, batch_first=True, bidirectional=True)
    with pytest.raises(UsageError, match="6 features"):
        FastDeepShap.from_parts(rnn, torch.nn.Linear(3, 1))
    with pytest.raises(UsageError, match="sigmoid with one output"):
        FastDeepShap.from_parts(rnn, torch.nn.Linear(6, 2), output="sigmoid")


@pytest.mark.parametrize("case", [("gru", 2, True, True, "logits"), ("lstm", 1, False, False, "identity"),
                                  ("lstm", 2, True, True, "sigmoid")], ids=case_id)
def test_shap_explanation_adds_up_and_plots(case, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    cell, layers, bi, tokens, head = case
    model = scaled(UserModel(*case), 7)
    x, bg = random_inputs(tokens, 7, n=3, b=4)
    engine = fast_for(model, dtype=torch.float64)
    words = [[f"w{int(i)}" for i in row] for row in x] if tokens else None
    target = None if head == "logits" else 0
    exp = engine.explain(x, bg, target=target, words=words, feature_names=["a", "b", "c", "d"] if not tokens else None)
    out = model(x).detach().numpy()
    out = out if target is None else out[:, :1]
    summed = exp.values.sum(axis=1) + exp.base_values
    np.testing.assert_allclose(summed if target is None else summed[:, None], out, atol=1e-10)
    assert exp.values.shape[:2] == ((3, 5) if tokens else (3, 20))
    one = exp[0] if target == 0 else exp[0, :, 2]
    if tokens:
        html = shap.plots.text(one, display=False)
        assert all(w in html for w in words[0])
    shap.plots.bar(one, show=False)
    shap.plots.waterfall(one, show=False)
    shap.plots.force(one, matplotlib=True, show=False)
    plt.close("all")


def test_captum_convention():
    from torch_imdb.explain.fast import FastDeepLiftShap

    model = scaled(UserModel("gru", 1, False, True, "logits"), 3)
    x, bg = random_inputs(True, 3)
    dls = FastDeepLiftShap(model_parts_of(model), dtype=torch.float64)
    with pytest.raises(Exception, match="pass target"):
        dls.attribute(x, bg)
    values, delta = dls.attribute(x, bg, target=1, return_convergence_delta=True)
    assert values.shape == (2, 5) and delta.abs().max() < 1e-10
    ref = ShapDeepExplainer(model, torch.float64).attribute(x, bg, target=1)
    assert np.abs(values.numpy() - ref.values).max() < 1e-10


def model_parts_of(model):
    from torch_imdb.explain.fast import RNNParts

    return RNNParts(model.rnn, model.fc, model.embedding, model_head(model))


@pytest.mark.parametrize("name", ["lstm-into-bigru", "hierarchical-attention", "cnn-lstm"])
def test_the_general_paths_recorded_products_are_the_products_its_fused_rules_run(name, monkeypatch):
    """On the general path every recurrent module's fused rule records its products: two modules, a module fed
    chunks of each pair (k blocks), a module after a convolution; the same list as the products run."""
    from zoo import ZOO, zoo_inputs

    from torch_imdb.explain import stack

    model, x, bg, extra = zoo_inputs(next(c for c in ZOO if c.name == name), dtype=torch.float32)
    engine = FastDeepShap(model, torch.float32)
    engine.attribute(x, bg)  # takes the general path
    assert engine.general is not None
    run = products_run(monkeypatch)
    with stack.recorded_products() as plan:
        engine.attribute(x, bg)
    assert len(plan) > 0 and sorted(run) == sorted(plan)
