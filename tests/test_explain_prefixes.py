"""Shared prefixes: a recurrent module run segment by segment over the distinct prefixes of permutation chains gives
the outputs and final states of its plain run, and runs whole wherever its inputs break the plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torch_imdb.explain.prefixes import chain_plan, shared_prefixes

T, E, H, d = 12, 4, 5, 12


def chains(m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """m random orders (m, d) of one player per step, the players each chain row keeps (m * (d - 1), d), and the
    rows' inputs (m * (d - 1), T, E): row k of a chain takes the input's vectors at the first k + 1 players of its
    order, a background row's elsewhere."""
    rng = np.random.default_rng(seed)
    orders = rng.random((m, d)).argsort(axis=1)
    g = torch.Generator().manual_seed(seed)
    x, bg = torch.randn(T, E, generator=g, dtype=torch.float64), torch.randn(m, T, E, generator=g, dtype=torch.float64)
    keep = np.zeros((m, d - 1, d), dtype=bool)
    for c in range(m):
        for k in range(d - 1):
            keep[c, k, orders[c, : k + 1]] = True
    rows = torch.where(torch.from_numpy(keep)[..., None], x, bg[:, None]).reshape(-1, T, E)
    return orders, keep.reshape(-1, d), rows


def test_a_node_holds_rows_that_keep_the_same_players_before_its_end():
    orders, keep, _ = chains(5)
    plan = chain_plan(orders, np.arange(d), T, segment=4)
    assert [(lo, hi) for lo, hi, *_ in plan.levels] == [(0, 4), (4, 8), (8, 12)]
    for lo, hi, first, node, parent in plan.levels:
        assert (keep[first[node], :hi] == keep[:, :hi]).all()  # same players before hi: same prefix
        assert len(first) < plan.rows if hi < T else len(first) == plan.rows  # every row differs by the end
    assert 0.3 < plan.fraction < 1


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch_first", [True, False])
def test_the_module_by_the_plan_gives_its_own_outputs_and_states(cell, layers, batch_first):
    torch.manual_seed(0)
    module = cell(E, H, num_layers=layers, batch_first=batch_first).double()
    orders, _, rows = chains(4)
    x = rows if batch_first else rows.transpose(0, 1)
    plan = chain_plan(orders, np.arange(d), T, segment=4)
    with torch.no_grad():
        out, state = module(x)
        with shared_prefixes(module, plan):
            out_p, state_p = module(x)
    assert plan.shared == 1 and plan.fraction < 0.8
    assert (out_p - out).abs().max() < 1e-12
    for s, s_p in zip(state if cell is nn.LSTM else (state,), state_p if cell is nn.LSTM else (state_p,)):
        assert (s_p - s).abs().max() < 1e-12
    assert module(x)[0].equal(out)  # the module's own forward is back after the block


@pytest.mark.parametrize("case", ["bidirectional", "broken", "other rows", "initial state"])
def test_inputs_that_break_the_plan_run_whole(case):
    torch.manual_seed(0)
    module = nn.LSTM(E, H, batch_first=True, bidirectional=case == "bidirectional").double()
    orders, _, rows = chains(3)
    plan = chain_plan(orders, np.arange(d), T, segment=4)
    hx = None
    if case == "broken":  # two rows of one node differ at step 0: a front end that mixes steps would do this
        row = int(np.flatnonzero(plan.agree > 0)[0])
        rows[row, 0] += 1.0
    if case == "other rows":
        rows = rows[:-1]
    if case == "initial state":
        hx = (torch.randn(1, len(rows), H, dtype=torch.float64), torch.randn(1, len(rows), H, dtype=torch.float64))
    with torch.no_grad():
        out = module(rows, hx)[0]
        with shared_prefixes(module, plan):
            out_p = module(rows, hx)[0]
    assert plan.shared == 0
    assert out_p.equal(out)
