"""Several explained inputs: a tuple such as (token ids, float features), each attributed, in every engine and both
drop-ins, with completeness over all of them against the model itself."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from torch_imdb.cli import ENGINES
from torch_imdb.errors import UsageError
from torch_imdb.explain import DeepExplainer, DeepLiftShap, LayerDeepLiftShap
from torch_imdb.explain.engines import make_engine
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.explain.inputs import check_several


class ReviewAndRating(nn.Module):
    """Token ids (N, T) -> embedding -> LSTM, and float side features (N, 3) -> Linear, joined in a tanh head
    with 2 outputs; padding (id 0) masked out of the LSTM's mean, a mask computed from the first input's ids."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.rnn = nn.Embedding(30, 6), nn.LSTM(6, 5, batch_first=True)
        self.side, self.out = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, ids, features):
        states = self.rnn(self.emb(ids))[0]
        mask = (ids != 0).unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.out(torch.tanh(pooled + self.side(features)))


class TwoSequences(nn.Module):
    """Two float sequences of different lengths and widths, each into its own GRU (shap #3593), one output."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.GRU(3, 4, batch_first=True), nn.GRU(2, 4, batch_first=True)
        self.fc = nn.Linear(8, 1)

    def forward(self, x, y):
        return torch.sigmoid(self.fc(torch.cat([self.a(x)[1][-1], self.b(y)[1][-1]], dim=1)))


def review_inputs(n: int, seed: int, T: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (n, T), generator=g)
    ids[: n // 2, -2:] = 0  # some padded
    return ids, torch.randn(n, 3, dtype=torch.float64, generator=g)


def sequence_inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 5, 3, dtype=torch.float64, generator=g),
            torch.randn(n, 8, 2, dtype=torch.float64, generator=g))


def model_of(kind: type) -> nn.Module:
    torch.manual_seed(0)
    return kind().double().eval()


@pytest.mark.parametrize("kind, inputs_of", [(ReviewAndRating, review_inputs), (TwoSequences, sequence_inputs)])
def test_a_tuple_of_inputs_is_exact_in_every_engine_and_the_deepshap_engines_agree(kind, inputs_of):
    model, inputs, baselines = model_of(kind), inputs_of(3, 1), inputs_of(4, 2)
    target = 1 if kind is ReviewAndRating else 0
    with torch.no_grad():
        f_x, f_bg = model(*inputs)[:, target].numpy(), model(*baselines)[:, target].numpy()
    by_engine = {}
    for name in ENGINES:
        options = {"max_evaluations": 10**6} if name == "shapley" else {}
        res = make_engine(name, model, torch.float64, **options).attribute(inputs, baselines, target=target)
        assert isinstance(res.values, tuple) and len(res.values) == 2, name
        # token ids get one value per token, float inputs one per entry
        expected_shapes = [(3, *x.shape[1:]) for x in inputs]
        assert [v.shape for v in res.values] == expected_shapes, name
        np.testing.assert_allclose(res.outputs, f_x, atol=1e-12, rtol=0, err_msg=name)
        total = sum(v.reshape(3, -1).sum(axis=1) for v in res.values)
        np.testing.assert_allclose(total, res.outputs - res.expected_value, atol=1e-10, rtol=0, err_msg=name)
        assert np.abs(res.residual).max() < 1e-10, name
        if kind is TwoSequences:  # no constants from the inputs: one base value, the background's mean
            assert abs(float(np.mean(res.expected_value)) - f_bg.mean()) < 1e-12, name
        by_engine[name] = res.values
    for name in ("captum", "fast", "fast-compiled", "fused"):
        for mine, shaps in zip(by_engine[name], by_engine["shap"]):
            np.testing.assert_allclose(mine, shaps, atol=1e-10, rtol=0, err_msg=name)
    # each input's share is its own: the side features' values differ from zero and from the tokens'
    assert all(np.abs(v).max() > 1e-3 for v in by_engine["shap"])


def test_the_shapley_engine_on_a_tuple_plays_one_game_over_every_entry_of_every_input():
    """Enumerated (few players), its values are the exact interventional Shapley values of all the entries of both
    inputs together, computed here by brute force over the coalitions."""
    model = model_of(ReviewAndRating)
    ids, feats = review_inputs(1, 3, T=3)
    bg_ids, bg_feats = review_inputs(2, 4, T=3)
    res = make_engine("shapley", model, torch.float64, max_evaluations=10**6).attribute((ids, feats),
                                                                                       (bg_ids, bg_feats), target=1)
    assert res.extra["exact"].all()
    d = 6  # 3 tokens and 3 features, all differing from both rows

    def v(coalition: set) -> float:
        keep_ids = torch.tensor([[k in coalition for k in range(3)]])
        keep_f = torch.tensor([[3 + k in coalition for k in range(3)]])
        with torch.no_grad():
            rows = model(torch.where(keep_ids, ids, bg_ids), torch.where(keep_f, feats, bg_feats))[:, 1]
        return float(rows.mean())

    phi = np.zeros(d)
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for size in range(d):
            weight = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for s in itertools.combinations(others, size):
                phi[i] += weight * (v(set(s) | {i}) - v(set(s)))
    np.testing.assert_allclose(np.concatenate([res.values[0][0], res.values[1][0]]), phi, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ENGINES)
def test_a_one_element_tuple_gives_the_single_inputs_values(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.GRU(3, 4, batch_first=True), Last(), nn.Linear(4, 1)).double().eval()
    x, bg = sequence_inputs(2, 5)[0], sequence_inputs(3, 6)[0]
    engine = make_engine(name, model, torch.float64, **({"max_evaluations": 10**6} if name == "shapley" else {}))
    alone, tupled = engine.attribute(x, bg).values, engine.attribute((x,), (bg,)).values
    assert isinstance(tupled, tuple) and len(tupled) == 1
    np.testing.assert_allclose(tupled[0], alone, atol=1e-12, rtol=0)


class Last(nn.Module):
    """The last step's output of a batch-first recurrent module's (output, state)."""

    def forward(self, out):
        return out[0][:, -1]


def test_shaps_documented_multi_input_usage_with_only_the_import_changed():
    """shap takes several inputs as lists: data=[bg1, bg2], shap_values([x1, x2]) -> one array per input, each with
    the outputs last; explainer(X) gives one Explanation per input, with base values."""
    model = model_of(ReviewAndRating)
    (ids, feats), (bg_ids, bg_feats) = review_inputs(3, 1), review_inputs(6, 2)
    e = DeepExplainer(model, [bg_ids, bg_feats])
    shap_values = e.shap_values([ids, feats])
    assert isinstance(shap_values, list) and [v.shape for v in shap_values] == [(3, 7, 2), (3, 3, 2)]
    with torch.no_grad():
        f_x = model(ids, feats).numpy()
    explanations = e([ids, feats])
    assert len(explanations) == 2 and explanations[1].values.shape == (3, 3, 2)
    # the mask comes from each input's ids, so each has its own base value (N, K)
    base = explanations[0].base_values
    np.testing.assert_allclose(explanations[1].base_values, base, atol=0, rtol=0)
    np.testing.assert_allclose(shap_values[0].sum(axis=1) + shap_values[1].sum(axis=1) + base, f_x, atol=1e-10,
                               rtol=0)
    np.testing.assert_allclose(explanations[1].values, shap_values[1], atol=1e-12, rtol=0)
    ranked, ranks = e.shap_values([ids, feats], ranked_outputs=1)
    assert [v.shape for v in ranked] == [(3, 7, 1), (3, 3, 1)]
    for n, k in enumerate(ranks[:, 0]):
        np.testing.assert_allclose(ranked[1][n, :, 0], shap_values[1][n, :, k], atol=1e-12, rtol=0)


def test_captums_documented_tuple_usage_with_only_the_import_changed():
    """Captum's tuple inputs and baselines give a tuple of attributions, and the delta covers them all."""
    model = model_of(TwoSequences)
    inputs, baselines = sequence_inputs(3, 1), sequence_inputs(5, 2)
    dls = DeepLiftShap(model)
    attributions, delta = dls.attribute(inputs, baselines=baselines, target=0, return_convergence_delta=True)
    assert isinstance(attributions, tuple) and [a.shape for a in attributions] == [x.shape for x in inputs]
    assert float(delta.abs().max()) < 1e-10
    with torch.no_grad():
        change = model(*inputs)[:, 0] - model(*baselines)[:, 0].mean()
    total = attributions[0].sum(dim=(1, 2)) + attributions[1].sum(dim=(1, 2))
    np.testing.assert_allclose(total.numpy(), change.numpy(), atol=1e-10, rtol=0)
    engine = dls._engine[1]
    again = dls.attribute(inputs, baselines=baselines, target=0)  # the same baselines: the same engine, kept
    assert dls._engine[1] is engine and all(torch.equal(a, b) for a, b in zip(again, attributions))
    dls.attribute(inputs, baselines=sequence_inputs(5, 3), target=0)  # other baselines: another engine
    assert dls._engine[1] is not engine


def test_layer_attributions_of_a_tuple_input_model_add_up():
    """Every path from either input passes through the head's Linear: its input attributions add up to f(x) - E f."""
    model = model_of(TwoSequences)
    inputs, baselines = sequence_inputs(3, 1), sequence_inputs(5, 2)
    values, delta = LayerDeepLiftShap(model, model.fc).attribute(inputs, baselines, return_convergence_delta=True,
                                                                 attribute_to_layer_input=True)
    assert values.shape == (3, 8) and float(delta.abs().max()) < 1e-10


@pytest.mark.parametrize("inputs, baselines, match", [
    ((torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3)), torch.ones(4, 3), "need a tuple of 2 baselines"),
    ((torch.ones(2, 3, dtype=torch.long), torch.ones(3, 3)), (torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3)),
     "different numbers of rows"),
    ((torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3)), (torch.ones(4, 3, dtype=torch.long), torch.ones(4, 2)),
     r"input 1 is \(3,\) per row but its baselines \(2,\)"),
    ((torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3)), (torch.ones(4, 3), torch.ones(4, 3)),
     "both be token ids or both floats"),
    ((torch.ones(2, 3, dtype=torch.long), torch.full((2, 3), float("nan"))),
     (torch.ones(4, 3, dtype=torch.long), torch.ones(4, 3)), "NaN or infinite"),
])
def test_bad_tuples_are_refused_in_one_line(inputs, baselines, match):
    with pytest.raises(UsageError, match=match) as err:
        check_several(inputs, baselines)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ENGINES)
def test_token_ids_past_the_vocabulary_or_read_by_no_embedding_are_refused_in_one_line(name):
    model = model_of(ReviewAndRating)
    (ids, feats), (bg_ids, bg_feats) = review_inputs(2, 1), review_inputs(3, 2)
    engine = make_engine(name, model, torch.float64)
    with pytest.raises(UsageError, match="vocabulary") as err:
        engine.attribute((ids + 40, feats), (bg_ids, bg_feats))
    assert "\n" not in str(err.value)
    if name != "shapley":  # the shapley engine needs no embedding: it plays with the ids themselves
        with pytest.raises(UsageError, match="no nn.Embedding of the model reads them"):
            make_engine(name, Detour().double(), torch.float64).attribute((ids, feats), (bg_ids, bg_feats))


class Detour(ReviewAndRating):
    """Embeds a shifted copy of its ids, not the ids it was given: there is no embedding of the input to explain."""

    def forward(self, ids, features):
        return super().forward((ids + 0) % 30, features)


def test_fast_explain_refuses_a_tuple_in_one_line_naming_the_drop_in():
    model = model_of(TwoSequences)
    with pytest.raises(UsageError, match=r"^explain takes one input; .*DeepExplainer\(model, baselines\)\(inputs\)"):
        FastDeepShap(model).explain(sequence_inputs(3, 1), sequence_inputs(5, 2))
