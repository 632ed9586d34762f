"""The transform on the heads people write: every op a rule, completeness guarded, refusals in one line.

The matrix: heads x {LSTM, GRU} x {token ids, float inputs}, explained by shap and
Captum through the transform, in float64 (exact to 1e-10, the two libraries equal to
1e-10) and float32 (within the guard's tolerance, equal to 1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import HEAD_MATRIX as MATRIX, E, H, T, head_case, head_case_id as case_id
from torch_imdb.errors import CompletenessError, UsageError
from torch_imdb.explain import CaptumDeepLiftShap, ShapDeepExplainer, UnruledOpError
from torch_imdb.explain import rules
from torch_imdb.explain.transform import Rule, RuleMode, explained, mark_batch

@pytest.mark.parametrize("case", MATRIX, ids=case_id)
def test_matrix_float64_exact_and_libraries_equal(case):
    model, x, bg, extra, output = head_case(case)
    s = ShapDeepExplainer(model, torch.float64, output=output).attribute(x, bg, additional_forward_args=extra)
    c = CaptumDeepLiftShap(model, torch.float64, per_call=2, output=output).attribute(
        x, bg, additional_forward_args=extra)
    assert np.abs(s.residual).max() < 1e-10 and np.abs(c.residual).max() < 1e-10
    assert np.abs(s.values - c.values).max() < 1e-10
    assert np.abs(s.values).max() > 1e-4, "a vacuous explanation (values ~0) would pass the 1e-10 checks above"
    with torch.no_grad():
        raw = model(x, *extra)
        raw = raw[output] if output else raw
    np.testing.assert_allclose(s.outputs, raw.reshape(len(x), -1)[:, 0].numpy(), atol=1e-12)


@pytest.mark.parametrize("case", MATRIX, ids=case_id)
def test_matrix_float32_within_the_guard(case):
    model, x, bg, extra, output = head_case(case, torch.float32)
    s = ShapDeepExplainer(model, torch.float32, output=output).attribute(x, bg, additional_forward_args=extra)
    c = CaptumDeepLiftShap(model, torch.float32, per_call=2, output=output).attribute(
        x, bg, additional_forward_args=extra)
    assert s.extra["completeness_ratio"] <= 1 and c.extra["completeness_ratio"] <= 1  # the guard passed
    assert np.abs(s.values - c.values).max() < 1e-5


def test_padding_gets_nothing_when_the_model_masks_it():
    """With pack_padded_sequence the padded positions never reach the output: exactly zero attribution."""
    model, x, bg, extra, _ = head_case(("packed", "lstm", True))
    s = ShapDeepExplainer(model, torch.float64).attribute(x, bg)
    assert np.all(s.values[1, 3:] == 0) and np.abs(s.values[1, :3]).max() > 1e-3


def test_base_values_are_per_input_when_masks_come_from_the_ids():
    model, x, bg, _, _ = head_case(("masked-mean", "gru", True))
    s = ShapDeepExplainer(model, torch.float64).attribute(x, bg)
    assert np.ndim(s.expected_value) == 1 and s.expected_value[0] != s.expected_value[1]
    with torch.no_grad():  # E_r f(r) with input k's mask: the background read at k's positions
        emb_bg = model.embedding(bg)
        m = (x[1] != 0).to(torch.float64)[None, :, None]
        out, _ = model.rnn(emb_bg)
        expected = torch.sigmoid(model.fc((out * m).sum(1) / m.sum(1))).mean()
    assert abs(s.expected_value[1] - float(expected)) < 1e-12


# ---------------------------------------------------------------- each rule against brute force


def pairs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, *shape, generator=g, dtype=torch.float64)  # [input; reference] of one pair


def shapley_two_players(f, a, b):
    """Shapley values of players a and b for f, by enumerating both orders."""
    (ax, ar), (bx, br) = a, b
    phi_a = 0.5 * ((f(ax, bx) - f(ar, bx)) + (f(ax, br) - f(ar, br)))
    phi_b = 0.5 * ((f(ax, bx) - f(ax, br)) + (f(ar, bx) - f(ar, br)))
    return phi_a, phi_b


@pytest.mark.parametrize("op", ["mul", "matmul", "div"])
def test_two_input_rules_are_the_shapley_values(op):
    a, b = pairs(3, 4, seed=1), pairs(4, 2, seed=2) if op == "matmul" else pairs(3, 4, seed=2)
    if op == "div":
        b = b.abs() + 0.5
    w = torch.randn(3, 2 if op == "matmul" else 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain = {"mul": torch.mul, "matmul": torch.matmul, "div": torch.div}[op]
    f = lambda p, q: float((w * plain(p, q)).sum())  # noqa: E731
    phi_a, phi_b = shapley_two_players(f, a, b)
    a_, b_ = a.clone().requires_grad_(), b.clone().requires_grad_()
    out = rules.divide(a_, b_) if op == "div" else rules.bilinear(plain, a_, b_)
    (out * w).sum().backward()
    assert abs(float((a_.grad[0] * (a[0] - a[1])).sum()) - phi_a) < 1e-12
    assert abs(float((b_.grad[0] * (b[0] - b[1])).sum()) - phi_b) < 1e-12


def test_rescale_rule_is_the_secant():
    z = pairs(5, seed=4)
    z_ = z.clone().requires_grad_()
    rules.elementwise(F.gelu, z_).sum().backward()
    np.testing.assert_allclose(z_.grad[0].numpy(), ((F.gelu(z[0]) - F.gelu(z[1])) / (z[0] - z[1])).numpy(), atol=1e-14)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "amax", "layer_norm", "maximum"])
def test_decompositions_add_up_exactly(name):
    z = pairs(3, 6, seed=5)
    z[:, 1, :2] = float("-inf")  # a masked row start, as attention and max pooling see it
    if name == "layer_norm":
        z = pairs(3, 6, seed=5)
    w = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    fns = {"softmax": lambda t: rules.softmax(t, -1), "log_softmax": lambda t: rules.log_softmax(t, -1),
           "amax": lambda t: rules.amax(t, -1, keepdim=True), "maximum": lambda t: rules.maximum(t, t.flip(-1)),
           "layer_norm": lambda t: rules.layer_norm(t, (6,), torch.ones(6, dtype=t.dtype) * 1.5, None)}
    z_ = z.clone().requires_grad_()
    y = fns[name](z_)
    finite = torch.isfinite(y[0]) & torch.isfinite(y[1])
    wy = (w.expand_as(y) if y.shape[-1] == 6 else w[:, :1]) * torch.where(finite, y, torch.zeros_like(y))
    wy.sum().backward()
    delta_in = torch.where(torch.isfinite(z[0]), z[0] - z[1], torch.zeros_like(z[0]))
    total = float((z_.grad[0] * delta_in).sum())
    assert abs(total - float(wy[0].sum().detach() - wy[1].sum().detach())) < 1e-12
    assert torch.isfinite(z_.grad).all()
    plain = {"softmax": torch.softmax(z, -1), "log_softmax": torch.log_softmax(z, -1),
             "amax": z.amax(-1, keepdim=True), "maximum": torch.maximum(z, z.flip(-1)),
             "layer_norm": F.layer_norm(z, (6,), torch.ones(6, dtype=z.dtype) * 1.5)}[name]
    torch.testing.assert_close(y.detach(), plain, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- the guard and the refusals


class _Doubling(torch.autograd.Function):
    """Forward 2x + x^2, backward claims 2: a custom op whose gradient is no DeepLIFT rule."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x + x * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class CustomOpModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(E, H, batch_first=True)
        self.fc = nn.Linear(H, 1)

    def forward(self, x):
        return self.fc(_Doubling.apply(self.rnn(x)[1][-1]))


@pytest.mark.parametrize("engine", [ShapDeepExplainer, CaptumDeepLiftShap])
def test_guard_raises_on_an_op_without_a_rule_and_opting_out_returns_the_residual(engine):
    torch.manual_seed(0)
    model = CustomOpModel().double().eval()
    x, bg = pairs(T, E, seed=7) * 2, pairs(T, E, seed=8)
    with pytest.raises(CompletenessError, match="no exact rule") as info:
        engine(model, torch.float64).attribute(x, bg)
    assert "\n" not in str(info.value)
    res = engine(model, torch.float64, check_completeness=False).attribute(x, bg)
    assert np.abs(res.residual).max() > 1e-3 and res.extra["completeness_ratio"] > 1


@pytest.mark.parametrize("engine", [ShapDeepExplainer, CaptumDeepLiftShap])
def test_guard_fires_when_the_attention_product_gets_the_plain_gradient_as_the_libraries_give_it(engine):
    """bmm(alpha, out): two explained operands. Without the Shapley rule (what shap and Captum do
    for any op they do not know) the attention model's values no longer add up."""
    model, x, bg, extra, _ = head_case(("attention", "lstm", True))
    assert engine(model, torch.float64).attribute(x, bg).extra["completeness_ratio"] < 1
    plain_bmm = {"bmm": Rule("linear", lambda f, a, k: f(*a, **k))}
    with pytest.raises(CompletenessError):
        engine(model, torch.float64, extra_rules=plain_bmm).attribute(x, bg)


class ControlFlowModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(E, H, batch_first=True)
        self.fc = nn.Linear(H, 1)

    def forward(self, x):
        h = self.rnn(x)[1][0][-1]
        if h.mean(dim=1)[0] > 0:  # Python control flow on an explained value
            h = -h
        return self.fc(h)


class ComparisonModel(ControlFlowModel):
    def forward(self, x):
        out = self.rnn(x)[0]
        return self.fc((out * (out > 0)).sum(1))


@pytest.mark.parametrize("model_class, op", [(ControlFlowModel, "gt"), (ComparisonModel, "gt")])
def test_ops_without_a_rule_are_refused_before_any_attribution_naming_the_line(model_class, op):
    torch.manual_seed(0)
    model = model_class().double().eval()
    x, bg = pairs(T, E, seed=9), pairs(T, E, seed=10)
    for engine in (ShapDeepExplainer, CaptumDeepLiftShap):
        with pytest.raises(UnruledOpError) as info:
            engine(model, torch.float64).attribute(x, bg)
        message = str(info.value)
        assert f"`{op}`" in message and "test_explain_transform.py:" in message and "\n" not in message
        assert "`if`" in message


def test_tuple_and_dict_outputs_need_a_choice():
    model, x, bg, extra, _ = head_case(("dict-output", "gru", False))
    with pytest.raises(UsageError, match="output=KEY"):
        ShapDeepExplainer(model, torch.float64).attribute(x, bg, additional_forward_args=extra)
    with pytest.raises(UsageError, match="one row per input"):
        ShapDeepExplainer(model, torch.float64, output="logit").attribute(x, bg, additional_forward_args=(extra[0][:1],))


def test_reading_an_explained_value_as_a_python_bool_is_refused():
    z = torch.randn(4, 3, requires_grad=True)
    with RuleMode(), pytest.raises(UnruledOpError, match="control flow"):
        bool(z[0, 0])
    with RuleMode():
        assert explained(z * 2) and not explained(torch.zeros_like(z))


class TimeMajor(nn.Module):
    """A batch_first=False model that works on time-major tensors (T, batch, .) to the end: a tanh, attention
    softmax over time (dim 0), the weighted sum, a mean and a max over time, a LayerNorm. ``batch_first`` runs the
    same weights batch first, the reference layout."""

    def __init__(self, cell: str, batch_first: bool) -> None:
        from conftest import CELLS

        super().__init__()
        self.batch_first = batch_first
        self.embedding = nn.Embedding(20, 4)
        self.rnn = CELLS[cell].make(4, 3, batch_first=batch_first, bidirectional=True)
        self.score, self.norm, self.fc = nn.Linear(6, 1), nn.LayerNorm(18), nn.Linear(18, 1)

    def forward(self, ids):
        x = self.embedding(ids)
        out, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        time = 1 if self.batch_first else 0
        keep = (ids != 0).to(out.dtype)
        keep = keep if self.batch_first else keep.t()
        h = torch.tanh(out)
        alpha = torch.softmax(self.score(h).squeeze(-1).masked_fill(keep == 0, float("-inf")), dim=time)
        context = (alpha.unsqueeze(-1) * out).sum(time)
        mean = (out * keep.unsqueeze(-1)).sum(time) / keep.sum(time).unsqueeze(-1)
        top = out.amax(dim=time)
        return torch.sigmoid(self.fc(self.norm(torch.cat([context, mean, top], dim=-1))))


@pytest.mark.parametrize("cell,T", [("lstm", 7), ("gru", 7), ("lstm", 10), ("gru", 30)])
def test_a_time_major_model_gets_its_rules_with_the_batch_on_dim_1(cell, T):
    """T = 10 is the libraries' batch (2 x 5 references), T = 30 the fast engine's (2 x 3 inputs x 5): where a
    tensor holds the batch is carried from the recurrent module, not read from sizes that cannot tell."""
    from torch_imdb.explain import FastDeepShap

    torch.manual_seed(11)
    first, later = TimeMajor(cell, True).double().eval(), TimeMajor(cell, False).double().eval()
    later.load_state_dict(first.state_dict())
    g = torch.Generator().manual_seed(2)
    x, bg = torch.randint(1, 20, (3, T), generator=g), torch.randint(0, 20, (5, T), generator=g)
    x[1, :2] = 0
    ref = ShapDeepExplainer(first, torch.float64).attribute(x, bg)
    s = ShapDeepExplainer(later, torch.float64).attribute(x, bg)
    c = CaptumDeepLiftShap(later, torch.float64).attribute(x, bg)
    f = FastDeepShap(later, torch.float64).attribute(x, bg)
    assert np.abs(ref.values).max() > 1e-3 and np.abs(ref.residual).max() < 1e-10
    for other in (s, c, f):
        assert np.abs(other.values - ref.values).max() < 1e-10


class TimeMajorView(nn.Module):
    """A time-major output viewed as (T * batch, H) for a linear layer, then viewed back, as people write it."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.fc = nn.LSTM(2, 3), nn.Linear(3, 1)

    def forward(self, x):
        out, _ = self.rnn(x.transpose(0, 1))
        T, N, H = out.shape
        return torch.tanh(self.fc(out.view(T * N, H)).view(T, N)).mean(0)


def test_a_view_of_a_time_major_output_works_in_every_engine():
    """The unrolled copy's time-major output was not contiguous: `.view` raised a raw RuntimeError in every engine."""
    from torch_imdb.explain import FastDeepShap

    torch.manual_seed(3)
    model = TimeMajorView().double().eval()
    x, bg = torch.randn(2, 5, 2, dtype=torch.float64), torch.randn(4, 5, 2, dtype=torch.float64)
    got = [engine(model, torch.float64).attribute(x, bg) for engine in (ShapDeepExplainer, CaptumDeepLiftShap,
                                                                       FastDeepShap)]
    assert all(np.abs(g.residual).max() < 1e-10 for g in got) and np.abs(got[0].values).max() > 1e-4
    assert max(np.abs(g.values - got[0].values).max() for g in got) < 1e-10


def test_a_batch_merged_by_a_view_whose_sizes_cannot_tell_is_refused():
    """Viewed as (T * batch, H) and back with T equal to the batch's size, nothing tells which dim is the batch:
    refused in one line, not paired along the wrong dim."""
    x, bg = torch.randn(2, 6, 2, dtype=torch.float64), torch.randn(3, 6, 2, dtype=torch.float64)
    with pytest.raises(UnruledOpError, match="where this tensor holds the batch was lost") as err:
        ShapDeepExplainer(TimeMajorView().double().eval(), torch.float64).attribute(x, bg)
    assert "test_explain_transform.py:" in str(err.value)


class TimeMajorBatchSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn, self.fc = nn.GRU(2, 3), nn.Linear(3, 1)

    def forward(self, x):
        out, _ = self.rnn(x.transpose(0, 1))
        return self.fc(torch.tanh(out).mean(1))  # dim 1 is the batch here


def test_a_reduction_over_a_time_major_batch_is_refused():
    x, bg = torch.randn(2, 5, 2, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64)
    with pytest.raises(UnruledOpError, match="batch dimension"):
        ShapDeepExplainer(TimeMajorBatchSum().double(), torch.float64).attribute(x, bg)


def test_a_time_major_reciprocal_is_a_rule_not_a_linear_map():
    class Reciprocal(TimeMajorBatchSum):
        def forward(self, x):
            out, _ = self.rnn(x.transpose(0, 1))
            return self.fc((2.0 / (1.5 + torch.tanh(out))).mean(0))

    class BatchFirst(Reciprocal):  # the same, batch first: a reflected division (2.0 / x) is no linear map either
        def forward(self, x):
            return self.fc((2.0 / (1.5 + torch.tanh(self.rnn(x.transpose(0, 1))[0].transpose(0, 1)))).mean(1))

    torch.manual_seed(0)
    x, bg = torch.randn(2, 5, 2, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64)
    model = Reciprocal().double()
    s = ShapDeepExplainer(model, torch.float64).attribute(x, bg)
    first = BatchFirst().double()
    first.load_state_dict(model.state_dict())
    b = ShapDeepExplainer(first, torch.float64).attribute(x, bg)
    assert np.abs(s.residual).max() < 1e-10 and np.abs(s.values).max() > 1e-3
    assert np.abs(b.residual).max() < 1e-10 and np.abs(b.values - s.values).max() < 1e-12


# ---------------------------------------------------------------- pooling, logsumexp, normalize, multi-head attention

class PooledOps(nn.Module):
    """Token ids -> embedding -> [Conv1d -> ReLU -> pooling] -> BiLSTM -> a head of the op under test -> Linear."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.embedding = nn.Embedding(40, 6)
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.pool = nn.MaxPool1d(3, 2, padding=1)
        self.lstm = nn.LSTM(8 if op.startswith("cnn") else 6, 8, batch_first=True, bidirectional=True)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=op != "mha-time-major")
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.fc = nn.Linear(16, 1)

    def forward(self, ids):
        x = self.embedding(ids)
        if self.op.startswith("cnn"):
            c = F.relu(self.conv(x.transpose(1, 2)))
            c = {"cnn-maxpool": lambda: self.pool(c), "cnn-ceil": lambda: F.max_pool1d(c, 2, ceil_mode=True),
                 "cnn-2d": lambda: F.max_pool2d(c[:, None], (1, 2), stride=(1, 2)).squeeze(1),
                 "cnn-dilated": lambda: F.max_pool1d(c, 2, stride=1, dilation=2)}[self.op]()
            x = c.transpose(1, 2)
        out, _ = self.lstm(x)
        by_channel = out.transpose(1, 2)
        mask = ids == 0
        head = {
            "adaptive-max": lambda: F.adaptive_max_pool1d(by_channel, 1).squeeze(-1),
            "adaptive-max-3": lambda: F.adaptive_max_pool1d(by_channel, 3).mean(-1),
            "adaptive-max-2d": lambda: F.adaptive_max_pool2d(by_channel[:, None], (4, 2)).mean((1, 2, 3))[:, None]
            * torch.ones(16, dtype=out.dtype),
            "adaptive-avg": lambda: F.adaptive_avg_pool1d(by_channel, 3).mean(-1),
            "logsumexp": lambda: torch.logsumexp(out, dim=1),
            "normalize": lambda: F.normalize(out.mean(1), dim=-1) * 3,
            "normalize-p1": lambda: F.normalize(out, p=1.0, dim=2).sum(1),
            "mha": lambda: self.attention(out, out, out, key_padding_mask=mask)[0].mean(1),
            "mha-time-major": lambda: self.attention(*[out.transpose(0, 1)] * 3, key_padding_mask=mask)[0].mean(0),
            "transformer": lambda: self.encoder(out, src_key_padding_mask=mask).mean(1),
        }.get(self.op, lambda: out[:, -1])()
        return self.fc(head).squeeze(-1)


POOLED_OPS = ["cnn-maxpool", "cnn-ceil", "cnn-2d", "cnn-dilated", "adaptive-max", "adaptive-max-3", "adaptive-max-2d",
              "adaptive-avg", "logsumexp", "normalize", "normalize-p1", "mha", "mha-time-major", "transformer"]


def pooled_case(op: str, dtype=torch.float64):
    torch.manual_seed(11)
    model = PooledOps(op).to(dtype).eval()
    ids = torch.randint(1, 40, (3, 9), generator=torch.Generator().manual_seed(12))
    ids[0, :3] = 0  # padding the masks see
    return model, ids, torch.randint(0, 40, (4, 9), generator=torch.Generator().manual_seed(13))


@pytest.mark.parametrize("op", POOLED_OPS)
def test_pooling_logsumexp_normalize_and_attention_are_exact(op):
    """The CNN-LSTM's max pooling, adaptive pooling, logsumexp, F.normalize, nn.MultiheadAttention and a
    TransformerEncoderLayer over LSTM outputs: shap, Captum and the fast engine equal, complete to 1e-10."""
    from torch_imdb.explain import FastDeepShap

    model, ids, bg = pooled_case(op)
    s = ShapDeepExplainer(model, torch.float64).attribute(ids, bg)
    c = CaptumDeepLiftShap(model, torch.float64).attribute(ids, bg)
    assert np.abs(s.residual).max() < 1e-10 and np.abs(c.residual).max() < 1e-10
    assert np.abs(s.values - c.values).max() < 1e-10 and np.abs(s.values).max() > 1e-4
    with torch.no_grad():
        np.testing.assert_allclose(s.outputs, model(ids).numpy(), atol=1e-12, rtol=0)
    if not op.startswith("cnn"):  # a front end before the recurrent layer is the transform's alone
        f = FastDeepShap(model, dtype=torch.float64).attribute(ids, bg)
        assert np.abs(f.values - s.values).max() < 1e-10
    s32 = ShapDeepExplainer(model.float(), torch.float32).attribute(ids, bg)
    assert s32.extra["completeness_ratio"] <= 1


def rule_values(fn, plain, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The multipliers times Δz of fn (under the rules) and of plain, a decomposition written out in plain ops."""
    out = []
    for f in (fn, plain):
        z_ = z.clone().requires_grad_()
        with RuleMode(batch=z.shape[0]):
            y = f(mark_batch(z_, 0))
        y.sum().backward()
        out.append(z_.grad[:z.shape[0] // 2] * (z[:z.shape[0] // 2] - z[z.shape[0] // 2:]))
    return out[0], out[1]


@pytest.mark.parametrize("name", ["max_pool1d", "max_pool2d", "adaptive_max_pool1d", "logsumexp", "normalize"])
def test_the_new_rules_equal_their_decompositions_written_by_hand(name):
    """Each rule gives the values of the same decomposition written in ops the transform already rules: windows
    stacked and folded by max, log(sum(exp)), x / sqrt(sum x^2)."""
    z = torch.randn(4, 3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(14))
    fns = {
        "max_pool1d": (lambda t: F.max_pool1d(t, 2), lambda t: torch.stack([t[..., 0::2], t[..., 1::2]], -1).amax(-1)),
        "max_pool2d": (lambda t: F.max_pool2d(t[:, None], (3, 2)).sum((1, 2)),
                       lambda t: torch.stack([t[:, r, c::2] for r in range(3) for c in range(2)], -1).amax(-1)),
        "adaptive_max_pool1d": (lambda t: F.adaptive_max_pool1d(t, 3),
                                lambda t: torch.stack([t[..., 0:3].amax(-1), t[..., 2:6].amax(-1), t[..., 5:8].amax(-1)],
                                                      -1)),
        "logsumexp": (lambda t: torch.logsumexp(t, dim=2), lambda t: torch.log(torch.exp(t).sum(2))),
        "normalize": (lambda t: F.normalize(t, dim=2), lambda t: t / torch.sqrt((t * t).sum(2, keepdim=True))),
    }
    ruled, by_hand = rule_values(*fns[name], z)
    torch.testing.assert_close(ruled, by_hand, atol=1e-12, rtol=0)
    assert ruled.abs().max() > 1e-3


def test_multi_head_attention_is_its_unfused_math():
    """nn.MultiheadAttention's values equal those of its math written out with the same weights."""
    torch.manual_seed(15)
    attention = nn.MultiheadAttention(8, 2, batch_first=True).double().eval()
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True

    def by_hand(t):
        w, b = attention.in_proj_weight.chunk(3), attention.in_proj_bias.chunk(3)
        q, k, v = (F.linear(t, w[i], b[i]).view(2, 5, 2, 4).transpose(1, 2) for i in range(3))
        scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(mask.repeat(1, 1)[:, None, None], float("-inf"))
        out = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 5, 8)
        return attention.out_proj(out).sum(1)

    z = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    ruled, plain = rule_values(lambda t: attention(t, t, t, key_padding_mask=mask.repeat(1, 1))[0].sum(1), by_hand,
                               z)
    torch.testing.assert_close(ruled, plain, atol=1e-12, rtol=0)


@pytest.mark.parametrize("call,why", [
    (lambda t: F.max_pool1d(t, 2, return_indices=True)[0], "return_indices"),
    (lambda t: torch.logsumexp(t, dim=0), "over the batch"),
    (lambda t: F.normalize(t, p=float("inf"), dim=2), "finite p"),
    (lambda t: F.normalize(t, dim=0), "over the batch"),
])
def test_what_the_new_rules_do_not_cover_is_refused_in_one_line(call, why):
    z = torch.randn(4, 3, 8, dtype=torch.float64).requires_grad_()
    with pytest.raises(UnruledOpError, match=why) as err, RuleMode(batch=4):
        call(z)
    assert "test_explain_transform.py:" in str(err.value) and "\n" not in str(err.value)


class AtanHead(nn.Module):
    """A head with an op the table does not hold: torch.atan."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding, self.lstm, self.fc = nn.Embedding(40, 6), nn.LSTM(6, 8, batch_first=True), nn.Linear(8, 1)

    def forward(self, ids):
        out, _ = self.lstm(self.embedding(ids))
        return self.fc(torch.atan(out * 3).mean(1)).squeeze(-1)


def test_a_callers_rule_joins_the_table_in_every_engine():
    """make_explainable(..., extra_rules=...) adds to the rules rather than replacing them, and every engine passes
    them through: refused without the entry, exact and equal in shap, Captum and the fast engine with it."""
    from torch_imdb.explain import RESCALE, FastDeepShap

    torch.manual_seed(17)
    model = AtanHead().double().eval()
    ids, bg = torch.randint(1, 40, (3, 7)), torch.randint(0, 40, (4, 7))
    with pytest.raises(UnruledOpError, match="no exact rule for `atan`.*test_explain_transform.py:"):
        ShapDeepExplainer(model, torch.float64).attribute(ids, bg)
    got = [engine(model, dtype=torch.float64, extra_rules={"atan": RESCALE}).attribute(ids, bg)
           for engine in (ShapDeepExplainer, CaptumDeepLiftShap, FastDeepShap)]
    assert all(np.abs(g.residual).max() < 1e-10 for g in got)
    assert max(np.abs(g.values - got[0].values).max() for g in got) < 1e-10 and np.abs(got[0].values).max() > 1e-4
    with pytest.raises(UsageError, match="extra_rules maps op names to torch_imdb.explain.Rule entries"):
        ShapDeepExplainer(model, torch.float64, extra_rules={"atan": torch.atan}).attribute(ids, bg)
