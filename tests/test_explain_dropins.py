"""The drop-ins: shap's and Captum's documented usage with only the import changed, exact values, and the engine
chosen for the model (the fast engine where it takes it, the fused transform otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import shap
import torch
from torch import nn
from zoo import ZOO, zoo_inputs

from torch_imdb.errors import CompletenessError, UsageError
from torch_imdb.explain import DeepExplainer, DeepLiftShap, FastDeepShap, LayerDeepLiftShap, ShapDeepExplainer


class SeriesClassifier(nn.Module):
    """Float sequences (N, T, 3) -> a GRU -> 3 classes (N, 3): shap's multi-output case."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.fc = nn.GRU(3, 5, batch_first=True), nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class MLP(nn.Module):
    """No recurrence: linear layers and ReLU, which shap's and Captum's own rules explain exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(18, 7), nn.ReLU(), nn.Linear(7, 2))

    def forward(self, x):
        return self.net(x)


def data(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_shaps_documented_usage_with_only_the_import_changed():
    """shap's DeepExplainer example (background, explainer, shap_values), written as its docs write it; exact."""
    torch.manual_seed(0)
    model = SeriesClassifier().double().eval()
    x_train, x_test = data(40, 1), data(3, 2)
    # -- as in shap's docs, with `from torch_imdb.explain import DeepExplainer` for `from shap import DeepExplainer`
    background = x_train[:20]
    e = DeepExplainer(model, background)
    shap_values = e.shap_values(x_test)
    # --
    assert shap_values.shape == (3, 6, 3, 3) and e.expected_value.shape == (3,)
    with torch.no_grad():
        f_x = model(x_test).numpy()
    np.testing.assert_allclose(shap_values.sum(axis=(1, 2)) + e.expected_value, f_x, atol=1e-10, rtol=0)
    for k in range(3):
        by_shap = ShapDeepExplainer(model, torch.float64).attribute(x_test, background, target=k).values
        np.testing.assert_allclose(shap_values[..., k], by_shap, atol=1e-10, rtol=0)


def test_it_gives_shaps_own_values_where_shaps_rules_are_exact():
    """On a model without recurrence (linear and ReLU), the drop-in equals shap.DeepExplainer itself."""
    torch.manual_seed(1)
    model = MLP().double().eval()
    background, x = data(10, 3), data(4, 4)
    ours = DeepExplainer(model, [background]).shap_values([x])
    theirs = shap.DeepExplainer(model, background).shap_values(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-10, rtol=0)


def test_ranked_outputs_as_shap_returns_them():
    torch.manual_seed(0)
    model = SeriesClassifier().double().eval()
    e = DeepExplainer(model, data(10, 1))
    x = data(4, 5)
    values, ranks = e.shap_values(x, ranked_outputs=2)
    all_values = e.shap_values(x)
    with torch.no_grad():
        expected_ranks = torch.argsort(-model(x), dim=1)[:, :2].numpy()
    np.testing.assert_array_equal(ranks, expected_ranks)
    for n in range(4):
        for r in range(2):
            np.testing.assert_allclose(values[n, ..., r], all_values[n, ..., ranks[n, r]], atol=1e-12, rtol=0)
    low, low_ranks = e.shap_values(x, ranked_outputs=1, output_rank_order="min")
    np.testing.assert_array_equal(low_ranks[:, 0], torch.argmin(model(x), dim=1).numpy())
    with pytest.raises(UsageError, match="output_rank_order must be max, min or max_abs"):
        e.shap_values(x, ranked_outputs=1, output_rank_order="median")


@pytest.mark.parametrize("name,general", [("last", False), ("masked-mean", False), ("cnn-lstm", True),
                                          ("lstm-into-bigru", True), ("residual-embedding", True)])
def test_the_call_gives_an_explanation_with_base_values_and_the_engine_fits_the_model(name, general):
    case = next(c for c in ZOO if c.name == name)
    model, x, bg, _ = zoo_inputs(case)
    e = DeepExplainer(model, bg)
    explanation = e(x)
    assert type(e.engine) is FastDeepShap and (e.engine.general is not None) == general
    assert isinstance(explanation, shap.Explanation) and explanation.values.shape == x.shape
    with torch.no_grad():
        f_x = model(x).numpy()
    np.testing.assert_allclose(explanation.values.sum(1) + explanation.base_values, f_x, atol=1e-10, rtol=0)


def test_check_additivity_false_returns_values_the_guard_would_refuse(monkeypatch):
    torch.manual_seed(0)
    model = SeriesClassifier().double().eval()
    e = DeepExplainer(model, data(10, 1))
    assert type(e.engine) is FastDeepShap
    real = FastDeepShap._chunk

    def scaled(self, *args):  # values that do not add up, as an op without an exact rule would give
        values, outputs, expected = real(self, *args)
        return values * 1.5, outputs, expected

    monkeypatch.setattr(FastDeepShap, "_chunk", scaled)
    with pytest.raises(CompletenessError):
        e.shap_values(data(2, 6))
    values = e.shap_values(data(2, 6), check_additivity=False)
    with torch.no_grad():
        f_x = model(data(2, 6)).numpy()
    assert np.isfinite(values).all() and np.abs(values.sum(axis=(1, 2)) + e.expected_value - f_x).max() > 1e-3


def test_captums_documented_usage_with_only_the_import_changed():
    """Captum's DeepLiftShap call (tuple inputs, target, the convergence delta) on a model without recurrence: the
    drop-in's attributions are Captum's own."""
    from captum.attr import DeepLiftShap as CaptumDLS

    torch.manual_seed(2)
    model = MLP().double().eval()
    inputs, baselines = data(3, 7), data(6, 8)
    # -- as in Captum's docs, with `from torch_imdb.explain import DeepLiftShap`
    dl = DeepLiftShap(model)
    attributions, delta = dl.attribute((inputs,), (baselines,), target=1, return_convergence_delta=True)
    # --
    theirs = CaptumDLS(model).attribute((inputs,), (baselines,), target=1)
    assert isinstance(attributions, tuple) and attributions[0].shape == inputs.shape
    torch.testing.assert_close(attributions[0], theirs[0], atol=1e-10, rtol=0)
    assert delta.shape == (3,) and delta.abs().max() < 1e-10


def test_captum_drop_in_on_a_recurrent_model_and_its_one_line_refusals():
    case = next(c for c in ZOO if c.name == "lstm-into-bigru")
    model, x, bg, _ = zoo_inputs(case)
    values = DeepLiftShap(model).attribute(x, bg)
    expected = ShapDeepExplainer(model, torch.float64).attribute(x, bg).values
    np.testing.assert_allclose(values.numpy(), expected, atol=1e-10, rtol=0)
    torch.manual_seed(0)
    with pytest.raises(UsageError, match="the model has 3 outputs: pass target="):
        DeepLiftShap(SeriesClassifier().double().eval()).attribute(data(2, 1), data(3, 2))
    with pytest.raises(UsageError, match="2 inputs need a tuple of 2 baselines, one per input, got Tensor"):
        DeepLiftShap(model).attribute((x, x), bg)


def test_captum_drop_in_passes_additional_forward_args():
    """A model with side features (an extra forward argument): the arguments reach every forward pass."""
    case = next(c for c in ZOO if c.name == "side-features")
    model, x, bg, extra = zoo_inputs(case)
    values = DeepLiftShap(model).attribute(x, bg, additional_forward_args=extra)
    expected = ShapDeepExplainer(model, torch.float64).attribute(x, bg, additional_forward_args=extra).values
    np.testing.assert_allclose(values.numpy(), expected, atol=1e-10, rtol=0)


# ---- LayerDeepLiftShap: attributions to a layer

def _zoo(name: str):
    return zoo_inputs(next(c for c in ZOO if c.name == name))


def _delta_f(model, x, bg) -> np.ndarray:
    """f(x) - E f by the user's module itself (these zoo models read no mask from their ids)."""
    with torch.no_grad():
        return (model(x).double() - model(bg).double().mean()).numpy()


@pytest.mark.parametrize("name,layer,calls", [("last", "rnn", 1), ("lstm-into-bigru", "second", 1),
                                              ("lstm-into-bigru", "rnn", 1), ("called-twice", "rnn", 2),
                                              ("cnn-lstm", "rnn", 1), ("hierarchical-attention", "chunks", 1)])
def test_layer_attributions_add_up_where_every_path_passes_through_the_layer(name, layer, calls):
    model, x, bg, _ = _zoo(name)
    values, delta = LayerDeepLiftShap(model, getattr(model, layer)).attribute(x, bg, return_convergence_delta=True)
    assert (len(values) == calls and isinstance(values, list)) if calls > 1 else isinstance(values, tuple)
    first = values[0] if calls > 1 else values
    assert first[0].shape[:2] == (len(x), first[0].shape[1]) and first[0].dim() == 3  # per step: (N, T', D*H)
    assert np.abs(delta.numpy()).max() < 1e-10
    total = sum(v.reshape(len(x), -1).sum(1) for call in (values if calls > 1 else [values]) for v in call[:1])
    total = total + sum(v.transpose(0, 1).reshape(len(x), -1).sum(1) for call in (values if calls > 1 else [values])
                        for v in call[1:])  # the final states hold the batch on dim 1, as nn.LSTM gives them
    assert np.abs(total.numpy() - _delta_f(model, x, bg)).max() < 1e-10  # against the model itself


def test_time_major_layer_attributions_keep_the_layers_layout():
    model, x, bg, _ = _zoo("time-major")
    (out, h, c), delta = LayerDeepLiftShap(model, model.rnn).attribute(x, bg, return_convergence_delta=True)
    assert out.shape == (x.shape[1], len(x), 2 * 5) and h.shape == (2, len(x), 5)
    assert np.abs(delta.numpy()).max() < 1e-10
    assert out.abs().sum() > 0 and h.abs().sum() == 0  # the head reads the per-step outputs only


def test_a_path_around_the_layer_is_the_convergence_delta_and_the_two_layers_add_up():
    model, x, bg, _ = _zoo("residual-embedding")
    through, delta = LayerDeepLiftShap(model, model.rnn).attribute(x, bg, return_convergence_delta=True)
    around = LayerDeepLiftShap(model, model.skip).attribute(x, bg)
    assert np.abs(delta.numpy()).min() > 1e-4  # the skip connection carries a share: the result says so
    rnn_total = through[0].reshape(len(x), -1).sum(1) + sum(t.transpose(0, 1).reshape(len(x), -1).sum(1)
                                                            for t in through[1:])
    assert np.abs((rnn_total + around[:, 0]).numpy() - _delta_f(model, x, bg)).max() < 1e-10
    assert np.abs(delta.numpy() + around[:, 0].numpy()).max() < 1e-10


def test_the_embeddings_attributions_are_the_input_attributions():
    model, x, bg, _ = _zoo("attention")
    per_dim = LayerDeepLiftShap(model, model.embedding).attribute(x, bg)
    assert np.abs(per_dim.sum(-1).numpy() - DeepLiftShap(model).attribute(x, bg).numpy()).max() < 1e-10


class StepProjection(nn.Module):
    """A Linear applied at every step in a Python loop, then an LSTM: a layer called T times."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.proj = nn.Embedding(30, 6), nn.Linear(6, 4)
        self.rnn, self.fc = nn.LSTM(4, 5, batch_first=True), nn.Linear(5, 1)

    def forward(self, ids):
        x = self.embedding(ids)
        steps = torch.stack([torch.tanh(self.proj(x[:, t])) for t in range(x.shape[1])], dim=1)
        return self.fc(self.rnn(steps)[0][:, -1]).squeeze(-1)


def test_a_layer_used_at_every_step_gives_one_entry_per_call_and_they_add_up():
    torch.manual_seed(3)
    model = StepProjection().double().eval()
    x, bg = torch.randint(1, 30, (2, 6)), torch.randint(1, 30, (3, 6))
    values, delta = LayerDeepLiftShap(model, model.proj).attribute(x, bg, return_convergence_delta=True)
    assert len(values) == 6 and all(v.shape == (2, 4) for v in values)
    assert np.abs(delta.numpy()).max() < 1e-10
    assert np.abs(sum(v.sum(1) for v in values).numpy() - _delta_f(model, x, bg)).max() < 1e-10
    inputs = LayerDeepLiftShap(model, model.proj).attribute(x, bg, attribute_to_layer_input=True)
    assert np.abs(sum(v.sum(1) for v in inputs).numpy() - _delta_f(model, x, bg)).max() < 1e-10


def test_layer_refusals_are_one_line():
    model, x, bg, _ = _zoo("hierarchical-attention")
    with pytest.raises(UsageError, match="one row per input") as err:
        LayerDeepLiftShap(model, model.words).attribute(x, bg)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="not a submodule"):
        LayerDeepLiftShap(model, nn.Linear(2, 2)).attribute(x, bg)


def test_layer_attributions_on_a_real_checkpoints_lstm_outputs_add_up(real_checkpoint):
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import load_imdb
    from torch_imdb.sampling import sample_background, sample_test_reviews

    ck, data = real_checkpoint
    ckpt, ds = load_checkpoint(ck), load_imdb(data)
    _, bg = sample_background(ckpt, ds, 8, seed=0)
    _, x, _ = sample_test_reviews(ckpt, ds, 3, seed=0)
    model = ckpt.model.double()
    (out, h, c), delta = LayerDeepLiftShap(model, model.rnn).attribute(torch.as_tensor(x), torch.as_tensor(bg),
                                                                      return_convergence_delta=True)
    assert out.shape == (3, ckpt.maxlen, model.rnn.hidden_size)
    assert np.abs(delta.numpy()).max() < 1e-10
    with torch.no_grad():
        p = torch.sigmoid(model(torch.as_tensor(x))).numpy() - torch.sigmoid(model(torch.as_tensor(bg))).mean().item()
    total = out.sum((1, 2)) + h.sum((0, 2)) + c.sum((0, 2))
    assert np.abs(total.numpy() - p).max() < 1e-10  # P(positive): what the sentiment model is explained as


def test_layer_attributions_of_a_multi_class_model_need_a_target():
    model, x, bg, _ = _zoo("three-classes")
    with pytest.raises(UsageError, match="the model has 3 outputs: pass target="):
        LayerDeepLiftShap(model, model.rnn).attribute(x, bg)
    _, delta = LayerDeepLiftShap(model, model.rnn).attribute(x, bg, target=2, return_convergence_delta=True)
    assert np.abs(delta.numpy()).max() < 1e-10
