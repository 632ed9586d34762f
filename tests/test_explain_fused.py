"""The recurrent module as a rule of the transform: the fast engine's trace and fused multiplier backward run as
the module's rule (make_explainable(..., fused=True)), and FusedDeepShap explains any model the transform takes
with it. Both give the values of the unrolled copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from zoo import ZOO, Case, Last, TwoModules, zoo_inputs

from torch_imdb.explain import CaptumDeepLiftShap, FusedDeepShap, ShapDeepExplainer
from torch_imdb.explain.backends import explainable_model
from torch_imdb.explain.stack import block_rows, laid_out, pair_grid, pairs_of


def grid_batch(n: int = 3, B: int = 4, seed: int = 0) -> torch.Tensor:
    """[inputs; references] laid out backgrounds first: pair p = b * n + i."""
    g = torch.Generator().manual_seed(seed)
    x, r = torch.randn(n, 5, 2, generator=g), torch.randn(B, 5, 2, generator=g)
    return torch.cat([x.repeat(B, 1, 1), r.repeat_interleave(n, dim=0)])


@pytest.mark.parametrize("hint", [None, (4, 3)])
def test_the_pairs_of_a_batch_are_found_as_a_grid(hint):
    batch = grid_batch()
    inputs, refs, i, b = pair_grid(batch, hint)
    assert len(inputs) == 3 and len(refs) == 4
    torch.testing.assert_close(inputs[i], batch[:12], rtol=0, atol=0)
    torch.testing.assert_close(refs[b], batch[12:], rtol=0, atol=0)


def test_a_batch_whose_pairs_are_not_a_whole_grid_has_none():
    batch = grid_batch()
    assert pair_grid(torch.cat([batch[:11], batch[:1], batch[12:]])) is None  # one pair twice, one missing
    assert pair_grid(batch[:-1]) is None  # odd rows
    wrong_hint = pair_grid(batch, (3, 4))  # a hint that does not hold: searched for instead
    assert wrong_hint is not None and len(wrong_hint[0]) == 3
    assert pair_grid(batch, (2, 3)) is None  # rows that are chunks of the caller's pairs: no grid, not searched


def test_pairs_that_are_no_grid_run_row_by_row():
    """A batch whose pairs are no grid is explained pair by pair: row p with row P + p, as the rules pair them."""
    batch = grid_batch()
    odd = torch.cat([batch[:11], batch[:1], batch[12:]])
    (inputs, refs, i, b), blocks = pairs_of(odd)
    assert blocks == (1, 1, 12) and torch.equal(inputs[i], odd[:12]) and torch.equal(refs[b], odd[12:])
    assert pairs_of(batch)[1] is None  # a grid


def test_pairs_cut_into_chunks_are_traced_by_their_distinct_rows():
    """A model that cuts each review into k rows (a hierarchical network's chunks) gives the recurrent module
    (b * n + i) * k + c: its n * k input rows and B * k reference rows are found, each pair's rows by index, and
    the layout (B, n, k) the backward walks as k grids."""
    g = torch.Generator().manual_seed(1)
    B, n, k = 4, 3, 2
    x, r = torch.randn(n, k, 5, 2, generator=g), torch.randn(B, k, 5, 2, generator=g)
    batch = torch.cat([x.repeat(B, 1, 1, 1).flatten(0, 1), r.repeat_interleave(n, dim=0).flatten(0, 1)])
    (inputs, refs, i, b), blocks = pairs_of(batch, (B, n))
    assert blocks == (B, n, k) and len(inputs) == n * k and len(refs) == B * k
    assert torch.equal(inputs[i], batch[: B * n * k]) and torch.equal(refs[b], batch[B * n * k :])
    assert block_rows(batch, (n, B)) is None  # a layout that does not hold is not taken
    assert block_rows(grid_batch(), (4, 3)) is None  # k = 1 is the grid's
    changed = batch.clone()
    changed[1] += 1  # one chunk of one pair differs from the same chunk of the other pairs of its input
    assert block_rows(changed, (B, n)) is None


@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.name)
def test_the_fused_rule_gives_the_unrolled_values_in_shap_and_captum(case):
    model, x, bg, extra = zoo_inputs(case)
    for engine in (ShapDeepExplainer, CaptumDeepLiftShap):
        plain, fused = (engine(model, torch.float64, output=case.output, fused=f).attribute(
            x, bg, target=case.target, additional_forward_args=extra) for f in (False, True))
        assert np.abs(fused.values - plain.values).max() < 1e-10 and np.abs(fused.residual).max() < 1e-10


# The unrolled rules: a PackedSequence and an initial state. (The hierarchical network's word-level rows are chunks
# of the pairs, and its chunk-level rows, computed pair by pair, differ in their last bits: no grid of rows, so both
# run the fused rule pair by pair.)
UNROLLED = {"packed-attention-mlp", "initial-state"}


@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.name)
def test_fused_deepshap_equals_shap_on_every_zoo_model(case, monkeypatch):
    import torch_imdb.explain.stack as stack

    calls = []
    real = stack.FusedRecurrence.apply
    monkeypatch.setattr(stack.FusedRecurrence, "apply", lambda *a: calls.append(1) or real(*a))
    model, x, bg, extra = zoo_inputs(case)
    s = ShapDeepExplainer(model, torch.float64, output=case.output).attribute(x, bg, target=case.target,
                                                                            additional_forward_args=extra)
    f = FusedDeepShap(model, torch.float64, output=case.output, chunk_pairs=4).attribute(
        x, bg, target=case.target, additional_forward_args=extra)  # chunks of one input: the grid is 3 x 1
    assert np.abs(f.values - s.values).max() < 1e-10 and np.abs(f.residual).max() < 1e-10
    assert bool(calls) == (case.name not in UNROLLED), len(calls)  # the fused rule ran wherever it applies
    model32, x32, bg32, extra32 = zoo_inputs(case, torch.float32)
    f32 = FusedDeepShap(model32, torch.float32, output=case.output).attribute(x32, bg32, target=case.target,
                                                                            additional_forward_args=extra32)
    assert f32.extra["completeness_ratio"] <= 1


def unrolled_and_fused_gradients(model, ids: torch.Tensor, grid: tuple | None = None) -> list[torch.Tensor]:
    """The gradients of the copy's embedded batch ``ids``, unrolled and by the fused rule (told the pairs' (B, n)
    layout ``grid``, as FusedDeepShap tells it), under a top gradient that differs row by row (shap's own backward
    differentiates the inputs' outputs only)."""
    grads = []
    for fused in (False, True):
        twin = explainable_model(model, ids.shape[1], torch.float64, fused=fused)
        for module in twin.modules():
            if hasattr(module, "grid_shape"):
                module.grid_shape = grid
        vectors = twin.embed(ids).detach().requires_grad_(True)
        top = torch.linspace(-1, 2, len(ids), dtype=torch.float64)
        with torch.enable_grad():
            y = twin(vectors, ids)[:, 0]
            grads.append(torch.autograd.grad((y * top).sum(), vectors)[0])
    return grads


def test_each_half_gets_the_multipliers_of_its_own_gradient():
    """With different top gradients on the two halves, the fused rule's gradients are the unrolled copy's, row
    by row."""
    model, x, bg, _ = zoo_inputs(Case("stacked", lambda: Last(cell=torch.nn.GRU, bidirectional=True, layers=2)))
    unrolled, fused = unrolled_and_fused_gradients(model, torch.cat([x.repeat(3, 1), bg.repeat_interleave(2, dim=0)]))
    torch.testing.assert_close(fused, unrolled, rtol=0, atol=1e-12)
    assert unrolled.abs().max() > 1e-4


@pytest.mark.parametrize("pool,cell,bidirectional", [("last", "lstm", False), ("last", "gru", True),
                                                     ("mean", "lstm", True), ("attention", "gru", False),
                                                     ("attention", "lstm", True), ("max", "lstm", False)])
def test_the_closed_form_heads_equal_the_general_path(pool, cell, bidirectional):
    """A SentimentRNN's heads in closed form (LinearHead, PooledHead) and its max pooling's ruled head give the
    values of the general path, the transform with the fused recurrence."""
    from torch_imdb.explain import FastDeepShap
    from torch_imdb.model import ModelConfig, SentimentRNN

    torch.manual_seed(9)
    model = SentimentRNN(ModelConfig(vocab_size=30, embed_dim=6, hidden=5, cell=cell, bidirectional=bidirectional,
                                     pool=pool, attention_dim=4)).double().eval()
    g = torch.Generator().manual_seed(3)
    ids, bg = torch.randint(1, 30, (3, 9), generator=g), torch.randint(0, 30, (4, 9), generator=g)
    ids[1, :4] = 0  # padding in front, as the model's data has it
    fast = FastDeepShap(model, torch.float64).attribute(ids, bg)
    general = FusedDeepShap(model, torch.float64).attribute(ids, bg)
    assert np.abs(fast.values - general.values).max() < 1e-10 and np.abs(general.values).max() > 1e-4


def test_pairs_in_any_order_get_the_unrolled_gradients(monkeypatch):
    """Pairs laid out backgrounds first are gathered and scattered as views; the same grid in another order takes
    indices. Both give the unrolled copy's gradients, row by row."""
    import torch_imdb.explain.stack as stack

    taken = []
    monkeypatch.setattr(stack, "laid_out", lambda *a: taken.append(laid_out(*a)) or taken[-1])
    model, x, bg, _ = zoo_inputs(Case("stacked", lambda: Last(cell=torch.nn.LSTM, bidirectional=True, layers=2)))
    ids = torch.cat([x.repeat(3, 1), bg.repeat_interleave(2, dim=0)])  # pair p = b * 2 + i
    p = torch.arange(6)
    order = torch.cat([p.flip(0), 6 + p.flip(0)])  # the same pairs, the last first: a grid, not laid out
    for batch, grid, views in ((ids, (3, 2), True), (ids[order], None, False)):
        taken.clear()
        unrolled, fused = unrolled_and_fused_gradients(model, batch, grid)
        assert taken == [views]
        torch.testing.assert_close(fused, unrolled, rtol=0, atol=1e-12)
        assert unrolled.abs().max() > 1e-4


@pytest.mark.parametrize("name", ["masked-mean", "lstm-into-bigru", "hierarchical-attention", "side-features"])
def test_the_outputs_and_base_from_the_pair_batch_are_the_copys_own(name):
    """FusedDeepShap reads f(x) and the base values off its pair batches; they equal the copy's separate passes
    (:meth:`_outputs_and_base`), per input where the model reads constants from its inputs."""
    case = next(c for c in ZOO if c.name == name)
    model, x, bg, extra = zoo_inputs(case)
    engine = FusedDeepShap(model, torch.float64, output=case.output, chunk_pairs=2 * len(bg))
    twin, xs, bgs, ids, extra_t = engine._prepare(x, bg, case.target, extra)
    _, _, (f_x, base) = engine._values(twin, xs, bgs, ids, extra_t, case.target)
    f_copy, base_copy = engine._outputs_and_base(twin, xs, bgs, ids, extra_t, case.target)
    np.testing.assert_allclose(f_x, f_copy, rtol=0, atol=1e-12)
    assert type(base) is type(base_copy)
    np.testing.assert_allclose(base, base_copy, rtol=0, atol=1e-12)


def test_a_kept_stack_serves_the_next_calls_until_the_weights_change(monkeypatch):
    """The references are traced once across chunks and calls; changed weights rebuild the stack, and the values
    are those of a new engine on the changed model."""
    import torch_imdb.explain.stack as stack

    model, x, bg, _ = zoo_inputs(Case("lstm-into-bigru", TwoModules))
    traced = []
    real = stack.RecurrentStack.trace
    monkeypatch.setattr(stack.RecurrentStack, "trace", lambda self, rows: traced.append(len(rows)) or real(self, rows))
    engine = FusedDeepShap(model, torch.float64, chunk_pairs=len(bg))  # one input a chunk
    first = engine.attribute(x, bg)
    assert traced.count(len(bg)) == 2  # each module's references once, for every chunk
    engine.attribute(x, bg)
    assert traced.count(len(bg)) == 2  # and for the next call
    with torch.no_grad():
        model.rnn.weight_hh_l0.mul_(1.5)
    changed = engine.attribute(x, bg)
    assert traced.count(len(bg)) == 4  # the stacks no longer fit the weights: both traced again
    fresh = FusedDeepShap(model, torch.float64).attribute(x, bg)
    np.testing.assert_allclose(changed.values, fresh.values, rtol=0, atol=1e-12)
    assert np.abs(changed.values - first.values).max() > 1e-6
