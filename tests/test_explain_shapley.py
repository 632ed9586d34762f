"""The shapley engine: sampled interventional Shapley values that converge to the exact ones (every coalition
enumerated on models of 12 steps), standard errors that cover them at the stated rate, values that always add up
to f(x) - E f of the model itself, on every model of the zoo, masks from the input included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from zoo import REFUSED, ZOO, zoo_inputs

from torch_imdb.explain import shapley
from torch_imdb.explain.own import OwnOutputs
from torch_imdb.explain.shapley import ShapleySampling, exact_shapley, permutations


def brute_force(model, x, bg, extra=(), output=None, target=0) -> np.ndarray:
    """Exact interventional Shapley values (T,) of one input x (T,) over bg (B, T), from every coalition."""
    own = OwnOutputs(model, torch.float64, output)
    T, B = len(x), len(bg)
    masks = torch.tensor([[(m >> t) & 1 for t in range(T)] for m in range(1 << T)], dtype=torch.bool)
    rows = torch.where(masks[:, None, :], x, bg[None]).reshape(-1, T)
    more = tuple(a.expand(len(rows), *a.shape[1:]) for a in extra)
    with torch.no_grad():
        v = own(rows, *more)[:, target].double().view(-1, B).mean(1).numpy()
    size = masks.sum(1).numpy()
    phi = np.zeros(T)
    for i in range(T):
        without = ~masks[:, i].numpy()
        idx = np.flatnonzero(without)
        w = np.array([math.factorial(s) * math.factorial(T - s - 1) / math.factorial(T) for s in size[idx]])
        phi[i] = (w * (v[idx + (1 << i)] - v[idx])).sum()
    return phi


def test_permutations_are_orders_and_the_enumeration_is_the_shapley_formula():
    orders = permutations(7, 50, np.random.default_rng(0))
    assert (np.sort(orders, axis=1) == np.arange(7)).all()
    w = np.array([0.5, -1.0, 2.0])
    v = np.array([sum(w[i] for i in range(3) if (m >> i) & 1) + 0.3 * ((m & 3) == 3) for m in range(8)])
    # an additive game plus an interaction of players 0 and 1, shared between them
    assert np.allclose(exact_shapley(v, 3), w + [0.15, 0.15, 0.0])


@pytest.mark.parametrize("case", [c for c in ZOO + REFUSED if not c.floats], ids=lambda c: c.name)
def test_every_coalition_enumerated_gives_the_exact_values_on_every_zoo_model(case):
    model, x, bg, extra = zoo_inputs(case)
    engine = ShapleySampling(model, torch.float64, output=case.output, target_se=1e-12, target_reliability=None,
                             max_evaluations=10 ** 9)
    res = engine.attribute(x, bg, target=case.target, additional_forward_args=extra)
    assert res.extra["exact"].all() and res.extra["standard_error"].max() == 0
    for k in range(len(x)):
        more = tuple(a[k : k + 1] for a in extra)
        exact = brute_force(model, x[k], bg, more, case.output, case.target)
        assert np.abs(res.values[k] - exact).max() < 1e-10, case.name
        assert np.abs(exact).max() > 1e-4


@pytest.mark.filterwarnings("ignore:no target")
def test_sampled_values_add_up_to_the_model_and_their_standard_errors_cover_the_exact_values(tiny_model):
    model = tiny_model.double()
    g = torch.Generator().manual_seed(3)
    x, bg = torch.randint(1, 40, (1, 12), generator=g), torch.randint(0, 40, (4, 12), generator=g)
    exact = brute_force(model, x[0], bg, target=0)
    with torch.no_grad():
        f_x = torch.sigmoid(model(x)).item()
        base = torch.sigmoid(model(bg)).mean().item()
    covered, errors = [], []
    for seed in range(40):
        engine = ShapleySampling(model, torch.float64, target_se=None, target_reliability=None,
                                 max_evaluations=600, seed=seed)
        res = engine.attribute(x, bg)
        assert not res.extra["exact"][0]  # sampled, not enumerated
        assert abs(res.values[0].sum() - (f_x - base)) < 1e-12  # efficient whatever the budget
        err, se = res.values[0] - exact, res.extra["standard_error"][0]
        covered.append(np.abs(err) <= 1.96 * se)
        errors.append(err)
    rate = np.mean(covered)
    assert 0.88 <= rate <= 0.995, rate  # 480 intervals at 95%
    assert np.abs(np.mean(errors, axis=0)).max() < 3 * np.std(errors, axis=0).max() / np.sqrt(40)  # unbiased


def test_no_target_warns(tiny_model):
    with pytest.warns(UserWarning, match="no target"):
        ShapleySampling(tiny_model, target_se=None, target_reliability=None)


@pytest.mark.filterwarnings("ignore:no target")
def test_the_sampled_error_shrinks_as_one_over_the_root_of_the_budget(tiny_model):
    model = tiny_model.double()
    g = torch.Generator().manual_seed(4)
    x, bg = torch.randint(1, 40, (1, 12), generator=g), torch.randint(0, 40, (4, 12), generator=g)
    exact = brute_force(model, x[0], bg)
    rmse = {}
    for budget in (500, 8000):  # 16 times the rows: a quarter of the error
        errs = [ShapleySampling(model, torch.float64, target_se=None, target_reliability=None, max_evaluations=budget,
                                seed=s).attribute(x, bg).values[0] - exact for s in range(12)]
        rmse[budget] = float(np.sqrt(np.mean(np.square(errs))))
    assert 0.15 < rmse[8000] / rmse[500] < 0.4, rmse


def test_null_players_get_zero_and_a_target_reliability_stops_sampling(tiny_model):
    g = torch.Generator().manual_seed(1)
    bg = torch.randint(1, 40, (5, 30), generator=g)
    x = torch.randint(1, 40, (1, 30), generator=g)
    bg[:, :4] = x[0, :4] = 0  # padding in every row: null players
    res = ShapleySampling(tiny_model, torch.float64, target_reliability=0.9, max_evaluations=10 ** 7).attribute(x, bg)
    assert (res.values[0, :4] == 0).all() and (res.extra["standard_error"][0, :4] == 0).all()
    assert res.extra["reliability"][0] >= 0.9 and not res.extra["exact"][0]
    assert res.extra["evaluations"][0] < 10 ** 7


def test_float_sequences_have_one_player_per_step_and_feature():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(2, 4, batch_first=True).double()

    class Series(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = lstm, torch.nn.Linear(4, 1).double()

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])

    model = Series().eval()
    x, bg = torch.randn(1, 3, 2, dtype=torch.float64), torch.randn(3, 3, 2, dtype=torch.float64)
    res = ShapleySampling(model, torch.float64, target_se=1e-12, target_reliability=None).attribute(x, bg)
    assert res.values.shape == (1, 3, 2) and res.extra["exact"].all()
    flat_model = FlatSeries(model)
    exact = brute_force(flat_model, x.reshape(1, 6)[0], bg.reshape(3, 6))
    assert np.abs(res.values.reshape(6) - exact).max() < 1e-12


class FlatSeries(torch.nn.Module):
    """A series model read from flattened (n, T*F) rows, for the brute-force enumeration."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, rows):
        return self.model(rows.view(len(rows), 3, 2))


@pytest.mark.filterwarnings("ignore:no target")
def test_the_batch_size_changes_no_value(tiny_model):
    g = torch.Generator().manual_seed(5)
    x, bg = torch.randint(1, 40, (2, 20), generator=g), torch.randint(0, 40, (3, 20), generator=g)
    runs = [ShapleySampling(tiny_model.double(), torch.float64, target_se=None, target_reliability=None,
                            max_evaluations=2000, seed=2, batch_rows=rows).attribute(x, bg) for rows in (7, 10 ** 5)]
    assert runs[0].extra["evaluations"].tolist() == runs[1].extra["evaluations"].tolist()
    assert np.abs(runs[0].values - runs[1].values).max() < 1e-12
    assert np.abs(runs[0].values).max() > 1e-4


@pytest.mark.filterwarnings("ignore:no target")
@pytest.mark.parametrize("case", ZOO + REFUSED, ids=lambda c: c.name)
def test_shared_prefixes_change_no_value_on_every_zoo_model(case, monkeypatch):
    model, x, bg, extra = zoo_inputs(case)
    plans, make = [], shapley.chain_plan
    monkeypatch.setattr(shapley, "chain_plan", lambda *a, **k: plans.append(make(*a, **k)) or plans[-1])
    runs = [ShapleySampling(model, torch.float64, output=case.output, target_se=None, target_reliability=None,
                            max_evaluations=1500, seed=1, prefix_segment=segment)
            .attribute(x, bg, target=case.target, additional_forward_args=extra) for segment in (4, None)]
    assert not runs[0].extra["exact"].any() and len(plans) > 0
    assert np.abs(runs[0].values - runs[1].values).max() < 1e-10
    assert np.abs(runs[0].values).max() > 1e-4
    shared = sum(p.shared for p in plans)
    if case.name == "last":  # an embedding into one LSTM: every chain's prefixes shared
        assert shared == len(plans)
    if case.name in ("cnn-lstm", "final-state-bigru"):  # a convolution mixes steps; a backward direction reads suffixes
        assert shared == 0 and len(plans) == len(x)  # one plan an input: none after the first that no module followed
