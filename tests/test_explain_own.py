"""The guard held against the model itself: every fast-engine call checks f(x) and E f against the user's own
module, untouched, so an engine that explains another function is refused, never checked against itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from torch_imdb.errors import CompletenessError, UsageError
from torch_imdb.explain import FastDeepShap, ShapDeepExplainer
from torch_imdb.explain.own import OwnOutputs, RNNParts
from torch_imdb.model import ModelConfig, SentimentRNN

THIS = __file__.rsplit("/", 1)[-1]


class MaskedMeanSeries(nn.Module):
    """A float series whose padding is all-zero steps, masked out of the mean: the mask comes from the input."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.fc = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 1)

    def forward(self, x):
        mask = (x.abs().sum(-1) > 0).unsqueeze(-1).to(x.dtype)  # MASK FROM X
        out, _ = self.lstm(x)
        return self.fc((out * mask).sum(1) / mask.sum(1).clamp(min=1)).squeeze(-1)


class MaskFromEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 4, padding_idx=0)
        self.lstm, self.fc = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 1)

    def forward(self, ids):
        e = self.emb(ids)
        mask = (e != 0).any(-1).unsqueeze(-1).to(e.dtype)  # MASK FROM THE EMBEDDING
        out, _ = self.lstm(e)
        return self.fc((out * mask).sum(1) / mask.sum(1).clamp(min=1)).squeeze(-1)


class LengthsFromX(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.fc = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 1)

    def forward(self, x):
        lengths = (x.abs().sum(-1) > 0).sum(1).clamp(min=1)  # LENGTHS FROM X
        _, (h, _) = self.lstm(pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False))
        return self.fc(h[-1]).squeeze(-1)


class ResidualFromEmbedding(nn.Module):
    """A head that also reads the embedding around the recurrent layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 4)
        self.lstm, self.fc, self.skip = nn.LSTM(4, 8, batch_first=True), nn.Linear(8, 1), nn.Linear(4, 1)

    def forward(self, ids):
        e = self.emb(ids)
        out, _ = self.lstm(e)
        return (self.fc(out.mean(1)) + self.skip(e.mean(1))).squeeze(-1)


def padded_floats(n: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, 6, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, :2] = 0
    return x


def padded_ids(n: int, seed: int) -> torch.Tensor:
    ids = torch.randint(1, 50, (n, 6), generator=torch.Generator().manual_seed(seed))
    ids[:, :2] = 0
    return ids


def case(name: str):
    torch.manual_seed(0)
    model = {"mask": MaskedMeanSeries, "embedding mask": MaskFromEmbedding, "lengths": LengthsFromX,
             "residual": ResidualFromEmbedding}[name]().double().eval()
    tokens = name in ("embedding mask", "residual")
    make = padded_ids if tokens else padded_floats
    return model, make(3, 1), make(5, 2)


@pytest.mark.parametrize("name,marker", [("mask", "MASK FROM X"), ("embedding mask", "MASK FROM THE EMBEDDING"),
                                         ("lengths", "LENGTHS FROM X")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_mask_or_lengths_from_the_input_is_refused_naming_the_line(name, marker, dtype):
    """These were explained silently wrong (the head ran the model on a placeholder, so the mask was all true, and
    the guard compared against that head's own output): now refused in one line, as shap and Captum refuse them."""
    model, x, bg = case(name)
    with pytest.raises(UsageError) as err:
        FastDeepShap(model.to(dtype), dtype=dtype).attribute(x, bg)
    message = str(err.value)
    assert "\n" not in message and f"at {THIS}:" in message and marker in message, message
    assert "no exact rule for" in message


@pytest.mark.parametrize("name", ["mask", "embedding mask", "lengths", "residual"])
def test_without_the_guard_the_outputs_and_residuals_are_the_models_own(name):
    """check_completeness=False returns the values with the real residual: f(x) and E f of the user's module."""
    model, x, bg = case(name)
    got = FastDeepShap(model, dtype=torch.float64, check_completeness=False).attribute(x, bg)
    with torch.no_grad():
        f_x, f_bg = model(x).numpy(), model(bg).numpy()
    np.testing.assert_allclose(got.outputs, f_x, rtol=0, atol=1e-12)
    if np.ndim(got.expected_value) == 0:  # a head that reads nothing of the inputs: E f over the background
        assert got.expected_value == pytest.approx(f_bg.mean(), abs=1e-12)
    real = got.values.reshape(len(x), -1).sum(1) - (f_x - got.expected_value)
    np.testing.assert_allclose(got.residual, real, rtol=0, atol=1e-12)
    assert np.abs(real).max() > 1e-3  # these engines do not explain these models: the residual says so


def test_a_head_reading_the_embedding_is_caught_and_explained_by_the_general_path():
    """It quoted an f(x) - E f computed on the placeholder and blamed an op with no rule. The shortcuts' f(x) is
    now caught against the model's own, with the real reason, and the engine explains the model by its general
    path."""
    model, x, bg = case("residual")
    engine = FastDeepShap(model, dtype=torch.float64)
    with pytest.raises(CompletenessError, match=r"f\(x\) of input 0 as the engine computes it is .* but the "
                                                r"model's own output is .*ShapDeepExplainer or CaptumDeepLiftShap"):
        next(engine._iter_own(x, bg))
    got = engine.attribute(x, bg)
    assert engine.general is not None and np.abs(got.residual).max() < 1e-10
    assert np.abs(got.values - ShapDeepExplainer(model, torch.float64).attribute(x, bg).values).max() < 1e-10


def sentiment(pool: str) -> SentimentRNN:
    torch.manual_seed(3)
    return SentimentRNN(ModelConfig(vocab_size=30, embed_dim=6, hidden=5, pool=pool, attention_dim=4)).eval()


@pytest.mark.parametrize("pool", ["last", "mean", "attention"])
def test_a_head_that_computes_something_else_is_caught_by_the_guard(pool, monkeypatch):
    """The closed-form heads' f(x) shifted by 0.01: the values and E f stay as they were, so only a guard that asks
    the model itself can see it."""
    engine = FastDeepShap(sentiment(pool), dtype=torch.float64)
    ids, bg = torch.randint(1, 30, (3, 7)), torch.randint(0, 30, (4, 7))
    engine.attribute(ids, bg)  # exact as it is: the shortcuts take this model, so a mismatch later is an error
    real = engine.head.multipliers
    monkeypatch.setattr(engine.head, "multipliers", lambda *a, **k: dataclasses.replace(
        real(*a, **k), f_x=real(*a, **k).f_x + 0.01))
    with pytest.raises(CompletenessError, match="but the model's own output is"):
        engine.attribute(ids, bg)


def test_the_users_module_is_left_as_it_was():
    model = sentiment("attention")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FastDeepShap(model, dtype=torch.float64).attribute(torch.randint(1, 30, (2, 7)), torch.randint(0, 30, (3, 7)))
    assert all(v.dtype == torch.float32 and torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


@pytest.mark.parametrize("output", ["sigmoid", "identity"])
def test_a_model_in_parts_is_checked_against_its_parts_run_by_torch(output):
    torch.manual_seed(4)
    parts = RNNParts(nn.GRU(6, 5, batch_first=True, bidirectional=True), nn.Linear(10, 1), nn.Embedding(30, 6),
                     output)
    own = OwnOutputs(parts, torch.float64)
    ids = torch.randint(0, 30, (3, 7))
    with torch.no_grad():
        _, h = parts.rnn.double()(parts.embedding.double()(ids))
        logits = parts.head.double()(torch.cat([h[0], h[1]], dim=1))
    expected = torch.sigmoid(logits) if output == "sigmoid" else logits
    torch.testing.assert_close(own(ids), expected, rtol=0, atol=1e-12)
    got = FastDeepShap.from_parts(parts.rnn, parts.head, parts.embedding, output,
                                  dtype=torch.float64).attribute(ids, torch.randint(0, 30, (4, 7)))
    np.testing.assert_allclose(got.outputs, expected[:, 0].numpy(), rtol=0, atol=1e-12)


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.fc = nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        out, _ = self.lstm(out[..., :3])  # SECOND CALL
        return self.fc(out[:, -1]).squeeze(-1)


class InitialState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.fc, self.side = nn.GRU(3, 8, batch_first=True), nn.Linear(8, 1), nn.Parameter(torch.ones(8))

    def forward(self, x):
        h0 = self.side.expand(1, len(x), 8).contiguous()
        out, _ = self.lstm(x, h0)  # INITIAL STATE
        return self.fc(out[:, -1]).squeeze(-1)


class FrontEnd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.front, self.lstm, self.fc = nn.Linear(3, 3), nn.LSTM(3, 8, batch_first=True), nn.Linear(8, 1)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.front(x)))  # A FRONT END
        return self.fc(out[:, -1]).squeeze(-1)


@pytest.mark.parametrize("model_class,why,marker", [
    (CalledTwice, "more than once", "SECOND CALL"), (InitialState, "initial state", "INITIAL STATE"),
    (FrontEnd, "transforms it first", "A FRONT END")])
def test_the_shortcuts_refusals_name_the_users_line_and_the_general_path_explains(model_class, why, marker):
    from torch_imdb.errors import ShapeRefusal

    torch.manual_seed(5)
    model = model_class().double().eval()
    x, bg = padded_floats(2, 3), padded_floats(3, 4)
    engine = FastDeepShap(model, dtype=torch.float64)
    with pytest.raises(ShapeRefusal) as err:
        next(engine._iter_own(x, bg))
    message = str(err.value)
    assert why in message and f"at {THIS}:" in message and marker in message and "\n" not in message, message
    assert "ShapDeepExplainer / CaptumDeepLiftShap" in message
    got = engine.attribute(x, bg)
    assert np.abs(got.values - ShapDeepExplainer(model, torch.float64).attribute(x, bg).values).max() < 1e-10


class ConvFront(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.conv = nn.Embedding(50, 4), nn.Conv1d(4, 6, 3, padding=1)
        self.lstm, self.fc = nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 1)

    def forward(self, ids):
        out, _ = self.lstm(torch.relu(self.conv(self.emb(ids).transpose(1, 2))).transpose(1, 2))
        return self.fc(out[:, -1]).squeeze(-1)


def test_a_front_end_that_changes_the_embeddings_width_is_refused_for_what_it_is():
    """The shortcuts said "the embedding's width differs", which gives the wrong reason; the engine then takes its
    general path."""
    from torch_imdb.explain.fast import model_parts

    with pytest.raises(UsageError, match=r"LSTM takes 6 features, its nn.Embedding gives 4 \(a front end"):
        model_parts(ConvFront().double().eval(), torch.float64)
    assert FastDeepShap(ConvFront().double().eval(), dtype=torch.float64).general is not None


@pytest.mark.parametrize("name", ["shap", "captum", "fused"])
def test_the_library_engines_check_the_copys_output_against_the_model_itself(name, monkeypatch):
    """The guard of shap, Captum and the general path takes f(x) from the user's module, untouched: an explainable
    copy that computed another function (here: shifted by 0.5) is refused in one line, and with the guard off the
    outputs returned are the model's own."""
    from torch_imdb.explain.engines import make_engine
    from torch_imdb.explain.transform import ExplainableModel

    model, x, bg = case("residual")
    with torch.no_grad():
        f_x = model(x).numpy()
    honest = make_engine(name, model, torch.float64).attribute(x, bg)
    np.testing.assert_allclose(honest.outputs, f_x, rtol=0, atol=1e-12)
    shifted = ExplainableModel.select
    monkeypatch.setattr(ExplainableModel, "select", lambda self, out: shifted(self, out) + 0.5)
    with pytest.raises(CompletenessError, match=r"f\(x\) of input 0 through the explainable copy is .* but the "
                                                r"model's own is") as err:
        make_engine(name, model, torch.float64).attribute(x, bg)
    assert "\n" not in str(err.value)
    unchecked = make_engine(name, model, torch.float64, check_completeness=False).attribute(x, bg)
    np.testing.assert_allclose(unchecked.outputs, f_x, rtol=0, atol=1e-12)


def test_the_own_outputs_follow_the_users_module_as_it_is_now():
    """Weights changed after the engine was made (in place, or a parameter assigned anew) are the ones the
    guard's f(x) uses; the user's module itself stays in its dtype."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh(), nn.Linear(2, 1))
    own = OwnOutputs(model, torch.float64)
    x = torch.randn(4, 3)
    expected = lambda: copy.deepcopy(model).double()(x.double()).detach()  # noqa: E731
    before = own(x)
    torch.testing.assert_close(before, expected())
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    torch.testing.assert_close(own(x), expected())
    assert (own(x) - before).abs().max() > 1e-3
    model[2].bias = nn.Parameter(torch.tensor([5.0]))
    torch.testing.assert_close(own(x), expected())
    assert model[0].weight.dtype == torch.float32


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_the_fast_engine_follows_weights_changed_after_it_was_made(pool):
    """An engine made before the model trained further explains the model as it is now: its values and base are
    those of an engine made afresh, not of the old weights (its recurrence, head and background hold copies)."""
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(vocab_size=30, embed_dim=6, hidden=5, pool=pool)).eval()
    g = torch.Generator().manual_seed(1)
    x, bg = torch.randint(1, 30, (3, 9), generator=g), torch.randint(1, 30, (4, 9), generator=g)
    engine = FastDeepShap(model, torch.float64)
    before = engine.attribute(x, bg)
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(1.5)
        model.fc.bias.add_(0.3)
    after = engine.attribute(x, bg)
    fresh = FastDeepShap(model, torch.float64).attribute(x, bg)
    np.testing.assert_allclose(after.values, fresh.values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(after.expected_value, fresh.expected_value, rtol=0, atol=1e-12)
    assert np.abs(after.values - before.values).max() > 1e-6
