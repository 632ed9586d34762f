"""The fast engine on the heads people write: the ruled head gives shap's values on the transformed model.

The head matrix (heads x {LSTM, GRU} x {token ids, float inputs}) of the transform's tests:
float64 within 1e-10 of shap through the transform, float32 within the guard's tolerance;
what the fast engine cannot run (a recurrent layer called twice) is
refused in one line naming the engines that explain it. Packed sequences run each review over its
own steps: the pairs' work is counted, not timed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from conftest import CELLS, HEAD_MATRIX, head_case, head_case_id
from torch_imdb.errors import UsageError
from torch_imdb.explain import FastDeepShap, ShapDeepExplainer
from torch_imdb.explain.head import PooledHead, RuledHead, _pairs_of
from torch_imdb.explain.stack import RNNResults
from torch_imdb.model import ModelConfig, SentimentRNN

REFUSED = {"rnn-twice": "more than once"}
RUN = [case for case in HEAD_MATRIX if case[0] not in REFUSED]


@pytest.mark.parametrize("case", RUN, ids=head_case_id)
def test_fast_engine_equals_shap_on_every_head_float64(case):
    model, x, bg, extra, output = head_case(case)
    fast = FastDeepShap(model, torch.float64, output=output).attribute(x, bg, additional_forward_args=extra)
    ref = ShapDeepExplainer(model, torch.float64, output=output).attribute(x, bg, additional_forward_args=extra)
    assert np.abs(fast.values).max() > 1e-4, "a vacuous explanation (values ~0) would pass the 1e-10 check below"
    assert np.abs(fast.values - ref.values).max() < 1e-10
    np.testing.assert_allclose(fast.outputs, ref.outputs, atol=1e-12)
    np.testing.assert_allclose(np.broadcast_to(fast.expected_value, (len(x),)),
                               np.broadcast_to(ref.expected_value, (len(x),)), atol=1e-12)
    assert np.abs(fast.residual).max() < 1e-10


@pytest.mark.parametrize("case", [c for c in RUN if c[1] == "lstm"], ids=head_case_id)
def test_fast_engine_float32_within_the_guard(case):
    model, x, bg, extra, output = head_case(case, torch.float32)
    fast = FastDeepShap(model, torch.float32, output=output).attribute(x, bg, additional_forward_args=extra)
    ref = ShapDeepExplainer(model, torch.float32, output=output).attribute(x, bg, additional_forward_args=extra)
    assert fast.extra["completeness_ratio"] <= 1
    assert np.abs(fast.values - ref.values).max() < 1e-5


@pytest.mark.parametrize("head", sorted(REFUSED))
def test_what_the_shortcuts_cannot_run_takes_the_general_path(head):
    """The shortcuts refuse in one line naming the user's line; the engine then explains the model by its general
    path, with shap's values."""
    from torch_imdb.errors import ShapeRefusal

    model, x, bg, extra, output = head_case((head, "lstm", True))
    engine = FastDeepShap(model, torch.float64, output=output)
    with pytest.raises(ShapeRefusal, match=REFUSED[head] + ".*--engines shap,captum"):
        next(engine._iter_own(x, bg, 0, extra))
    got = engine.attribute(x, bg, additional_forward_args=extra)
    ref = ShapDeepExplainer(model, torch.float64, output=output).attribute(x, bg, additional_forward_args=extra)
    assert engine.general is not None and np.abs(got.values - ref.values).max() < 1e-10


class Transformed(nn.Module):
    """Scales its embeddings before the LSTM: the engine's own recurrence would not see that."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.rnn, self.fc = nn.Embedding(12, 4), nn.LSTM(4, 3, batch_first=True), nn.Linear(3, 1)

    def forward(self, ids):
        out, _ = self.rnn(2 * self.embedding(ids))
        return self.fc(out[:, -1])


def test_a_transformed_input_to_the_recurrent_layer_is_refused_by_the_shortcuts():
    from torch_imdb.errors import ShapeRefusal

    engine = FastDeepShap(Transformed())
    x, bg = torch.randint(0, 12, (2, 5)), torch.randint(0, 12, (3, 5))
    with pytest.raises(ShapeRefusal, match="unchanged"):
        next(engine._iter_own(x, bg))
    engine.attribute(x, bg)  # the general path
    assert engine.general is not None


class TimeFirst(nn.Module):
    """A batch_first=False LSTM whose head reads the last step's output: the layout many older models use."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embedding = nn.Embedding(12, 4)
        self.rnn = nn.LSTM(4, 3, batch_first=batch_first, bidirectional=True)
        self.fc = nn.Linear(6, 1)

    def forward(self, ids):
        x = self.embedding(ids)
        out, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        return torch.sigmoid(self.fc(out[:, -1] if self.batch_first else out[-1]))


def test_batch_first_false_gives_the_same_values():
    torch.manual_seed(3)
    first = TimeFirst(True).double().eval()
    later = TimeFirst(False).double().eval()
    later.load_state_dict(first.state_dict())
    x, bg = torch.randint(0, 12, (3, 6)), torch.randint(0, 12, (4, 6))
    a = FastDeepShap(first, torch.float64).attribute(x, bg)
    b = FastDeepShap(later, torch.float64).attribute(x, bg)
    ref = ShapDeepExplainer(later, torch.float64).attribute(x, bg)
    assert np.abs(a.values - b.values).max() < 1e-12
    assert np.abs(b.values - ref.values).max() < 1e-10


@pytest.mark.parametrize("pool", ["mean", "max", "attention"])
def test_pooled_sentiment_models_take_the_fast_engine_with_per_review_base_values(pool):
    torch.manual_seed(5)
    model = SentimentRNN(ModelConfig(vocab_size=30, embed_dim=6, hidden=5, bidirectional=True, pool=pool,
                                     attention_dim=4)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    g = torch.Generator().manual_seed(0)
    x, bg = torch.randint(1, 30, (3, 7), generator=g), torch.randint(0, 30, (5, 7), generator=g)
    x[1, :3] = 0  # a padded review: its mask reaches the references too, so its base value differs
    fast = FastDeepShap(model, torch.float64).attribute(x, bg)
    ref = ShapDeepExplainer(model, torch.float64).attribute(x, bg)
    assert np.abs(fast.values - ref.values).max() < 1e-10
    assert np.ndim(fast.expected_value) == 1 and np.ptp(fast.expected_value) > 1e-6
    np.testing.assert_allclose(fast.expected_value, ref.expected_value, atol=1e-12)


def pooled_case(pool: str, dtype=torch.float64, cell: str = "lstm"):
    """A bidirectional SentimentRNN with strong weights, inputs with padding (one all padding, one sharing the
    references' padding) and their traces."""
    torch.manual_seed(7)
    model = SentimentRNN(ModelConfig(vocab_size=30, embed_dim=6, hidden=5, bidirectional=True, pool=pool, cell=cell,
                                     attention_dim=4)).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    g = torch.Generator().manual_seed(1)
    x, bg = torch.randint(1, 30, (4, 9), generator=g), torch.randint(1, 30, (6, 9), generator=g)
    x[1, :4], bg[:3, :4], x[3] = 0, 0, 0  # input 1 shares the padding of references 0-2; input 3 is all padding
    engine = FastDeepShap(model, dtype)
    return model, x, bg, engine.trace(x).results, engine.trace(bg).results


@pytest.mark.parametrize("pool", PooledHead.POOLS)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_pooled_head_in_closed_form_gives_the_ruled_heads_multipliers(pool, cell):
    model, x, bg, rx, rr = pooled_case(pool, cell=cell)
    closed = PooledHead(model, torch.float64).multipliers(rx, rr, 0, (x,))
    ruled = RuledHead(model, torch.float64).multipliers(rx, rr, 0, (x,))
    everything = slice(None), slice(None)
    assert closed.output_multipliers(*everything).abs().max() > 1e-3
    assert (closed.output_multipliers(*everything) - ruled.outputs).abs().max() < 1e-12
    some = slice(2, 5), slice(3, 7)  # a window of steps and features, as the recurrence asks for them
    assert torch.equal(closed.output_multipliers(*some), closed.output_multipliers(*everything)[2:5, ..., 3:7])
    assert ruled.h_n is None or ruled.h_n.abs().max() == 0  # the pools read the outputs alone
    assert (closed.f_x - ruled.f_x).abs().max() < 1e-12 and (closed.f_r - ruled.f_r).abs().max() < 1e-12
    with torch.no_grad():
        assert (closed.f_x - torch.sigmoid(model(x))).abs().max() < 1e-12


def test_a_sentiment_model_pooling_by_attention_gets_the_closed_form_head():
    model, x, bg, _, _ = pooled_case("attention")
    engine = FastDeepShap(model, torch.float64)
    assert isinstance(engine.head, PooledHead)
    assert isinstance(FastDeepShap(pooled_case("max")[0], torch.float64).head, RuledHead)  # max: the ruled head
    ref = ShapDeepExplainer(model, torch.float64).attribute(x, bg)
    assert np.abs(engine.attribute(x, bg).values - ref.values).max() < 1e-10
    with pytest.raises(UsageError, match="target 1"):
        engine.attribute(x, bg, target=1)
    with pytest.raises(UsageError, match="token ids alone"):
        engine.attribute(x, bg, additional_forward_args=(torch.ones(4, 9),))


def test_the_compiled_attention_rules_give_the_eager_values():
    model, x, bg, rx, rr = pooled_case("attention", torch.float32)
    everything = slice(None), slice(None)
    eager = PooledHead(model, torch.float32).multipliers(rx, rr, 0, (x,)).output_multipliers(*everything)
    compiled = PooledHead(model, torch.float32, compile=True).multipliers(rx, rr, 0, (x,)).output_multipliers(*everything)
    assert (eager - compiled).abs().max() < 1e-6 * eager.abs().max()


def test_pairs_are_laid_out_backgrounds_first():
    x, r = torch.arange(2.0)[:, None], 10 + torch.arange(3.0)[:, None]
    pairs = _pairs_of(x, r, 0)[:, 0].tolist()
    assert pairs == [0, 1, 0, 1, 0, 1, 10, 10, 11, 11, 12, 12]  # pair p = b * n + i: input i, reference b


def test_head_multipliers_are_the_gradient_for_a_linear_head():
    """A linear head's multipliers are its weights, at every pair: a check of the feed and the layout."""

    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = nn.GRU(2, 3, batch_first=True), nn.Linear(3, 1)

        def forward(self, x):
            return self.fc(self.rnn(x)[0].mean(dim=1))

    model = Mean().double().eval()
    engine = FastDeepShap(model, torch.float64)
    x, bg = torch.randn(2, 4, 2, dtype=torch.float64), torch.randn(3, 4, 2, dtype=torch.float64)
    rx, rr = engine.trace(x).results, engine.trace(bg).results
    assert isinstance(rx, RNNResults) and rx.c_n is None
    hm = engine.head.multipliers(rx, rr, 0, (None,))
    expected = (model.fc.weight[0] / 4).detach().expand(4, 3, 2, 3)
    assert hm.outputs.shape == (4, 3, 2, 3) and torch.allclose(hm.outputs, expected)
    assert hm.h_n is None or hm.h_n.abs().max() == 0
    with torch.no_grad():
        np.testing.assert_allclose(hm.f_x.numpy(), model(x)[:, 0].numpy(), atol=1e-12)


def test_captum_convention_takes_additional_forward_args():
    from torch_imdb.explain import CaptumDeepLiftShap, FastDeepLiftShap

    model, x, bg, extra, output = head_case(("two-inputs", "gru", False))
    values, delta = FastDeepLiftShap(model, dtype=torch.float64).attribute(x, bg, None, extra,
                                                                           return_convergence_delta=True)
    ref = CaptumDeepLiftShap(model, torch.float64).attribute(x, bg, additional_forward_args=extra)
    assert values.shape == x.shape and delta.abs().max() < 1e-10
    assert np.abs(values.numpy() - ref.values).max() < 1e-10


def test_head_blocks_of_references_give_the_same_values():
    """The ruled head runs the pairs in blocks of references (to stay in cache): any block size, same values."""
    model, x, bg, extra, output = head_case(("attention", "lstm", True))
    whole = FastDeepShap(model, torch.float64, output=output)
    blocked = FastDeepShap(model, torch.float64, output=output)
    blocked.head.block_pairs = 3  # one reference (of 3) per block for these 2 inputs
    a, b = whole.attribute(x, bg), blocked.attribute(x, bg)
    assert np.abs(a.values - b.values).max() < 1e-14
    np.testing.assert_array_equal(a.expected_value, b.expected_value)


class Packed(nn.Module):
    """The README's classifier in small: ids post-padded with 0, packed by their lengths, attention over the outputs."""

    def __init__(self, cell: str = "gru") -> None:
        super().__init__()
        self.embedding = nn.Embedding(30, 6, padding_idx=0)
        self.rnn = CELLS[cell].make(6, 5, batch_first=True, bidirectional=True)
        self.score, self.fc = nn.Linear(10, 1), nn.Linear(10, 1)

    def forward(self, ids):
        mask = ids != 0
        packed = pack_padded_sequence(self.embedding(ids), mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=ids.shape[1])
        alpha = torch.softmax(self.score(out).squeeze(-1).masked_fill(~mask, float("-inf")), dim=1)
        return torch.sigmoid(self.fc((alpha.unsqueeze(-1) * out).sum(1)))


def test_a_packed_review_padded_to_400_costs_the_same_pair_steps_as_unpadded():
    torch.manual_seed(0)
    model = Packed("lstm").double().eval()
    g = torch.Generator().manual_seed(1)
    x, bg = torch.randint(1, 30, (1, 12), generator=g), torch.randint(1, 30, (4, 12), generator=g)
    pad = lambda t: torch.cat([t, t.new_zeros(len(t), 388)], dim=1)  # noqa: E731  to 400 steps
    short, long = FastDeepShap(model, torch.float64), FastDeepShap(model, torch.float64)
    a, b = short.attribute(x, bg), long.attribute(pad(x), pad(bg))
    assert short.pair_steps == long.pair_steps == 4 * 1 * 12 * 2  # backgrounds x reviews x steps x directions
    np.testing.assert_allclose(b.values[:, :12], a.values, atol=1e-12)
    assert np.abs(b.values[:, 12:]).max() == 0  # the padding past the review is never read
    ref = ShapDeepExplainer(model, torch.float64).attribute(pad(x), pad(bg))
    assert np.abs(b.values - ref.values).max() < 1e-10


def test_packed_reviews_of_mixed_lengths_each_run_their_own_steps():
    torch.manual_seed(1)
    model = Packed("gru").double().eval()
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([9, 3, 9, 6, 1])
    x = torch.randint(1, 30, (5, 9), generator=g) * (torch.arange(9)[None] < lengths[:, None])
    bg = torch.randint(1, 30, (3, 9), generator=g)
    engine = FastDeepShap(model, torch.float64, chunk_pairs=6)  # chunks of 2 reviews: groups split across chunks
    fast = engine.attribute(x, bg)
    ref = ShapDeepExplainer(model, torch.float64).attribute(x, bg)
    assert np.abs(fast.values - ref.values).max() < 1e-10
    np.testing.assert_allclose(fast.expected_value, ref.expected_value, atol=1e-12)
    assert engine.pair_steps == 3 * int(lengths.sum()) * 2


def test_packed_inputs_go_in_order_of_length_so_that_a_chunk_runs_together():
    torch.manual_seed(1)
    model = Packed("lstm").double().eval()
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([2, 8, 5, 2, 8, 5, 2, 8])  # interleaved: consecutive chunks of 2 would mix lengths
    x = torch.randint(1, 30, (8, 8), generator=g) * (torch.arange(8)[None] < lengths[:, None])
    bg = torch.randint(1, 30, (3, 8), generator=g)
    engine = FastDeepShap(model, torch.float64, chunk_pairs=6)  # chunks of 2 reviews
    groups = []
    head = engine.head.multipliers
    engine.head.multipliers = lambda rx, *a: groups.append(len(rx.outputs)) or head(rx, *a)
    fast = engine.attribute(x, bg)
    assert groups == [2, 1, 1, 1, 1, 2]  # lengths 2,2 | 2,5 | 5,8 | 8,8: one group per length in each chunk
    # (in the inputs' own order every chunk would mix two lengths: eight groups of one)
    rows = [r.tolist() for r, *_ in engine.iter_attribute(x, bg)]
    assert rows == [[0, 3], [6, 2], [5, 1], [4, 7]]  # the input numbers each chunk holds, by length
    ref = ShapDeepExplainer(model, torch.float64).attribute(x, bg)
    assert np.abs(fast.values - ref.values).max() < 1e-10  # and the values come back in the inputs' order
    np.testing.assert_allclose(fast.outputs, ref.outputs, atol=1e-12)


class ReadsPadding(Packed):
    """Packed, but pooled by a mean over every position, padding included: the padding changes the output."""

    def forward(self, ids):
        mask = ids != 0
        packed = pack_padded_sequence(self.embedding(ids), mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=ids.shape[1])
        return torch.sigmoid(self.fc(out.mean(dim=1)))


def test_trim_padding_gives_the_same_values_and_refuses_a_model_that_reads_the_padding():
    torch.manual_seed(4)
    g = torch.Generator().manual_seed(5)
    lengths = torch.tensor([7, 3, 7, 5])
    x = torch.randint(1, 30, (4, 30), generator=g) * (torch.arange(30)[None] < lengths[:, None])
    bg = torch.randint(1, 30, (3, 30), generator=g)
    model = Packed("lstm").double().eval()
    full = FastDeepShap(model, torch.float64).attribute(x, bg)
    trimmed = FastDeepShap(model, torch.float64, trim_padding=True).attribute(x, bg)
    assert np.abs(full.values - trimmed.values).max() < 1e-12
    np.testing.assert_allclose(full.expected_value, trimmed.expected_value, atol=1e-12)
    reads = ReadsPadding("lstm").double().eval()
    FastDeepShap(reads, torch.float64).attribute(x, bg)  # exact without trimming
    with pytest.raises(UsageError, match="reads that padding"):
        FastDeepShap(reads, torch.float64, trim_padding=True).attribute(x, bg)
