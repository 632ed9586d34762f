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
from torch_imdb.explain.transform import RULES, Rule, RuleMode, explained

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
    plain_bmm = {**RULES, "bmm": Rule("linear", lambda f, a, k: f(*a, **k))}
    with pytest.raises(CompletenessError):
        engine(model, torch.float64, rules_table=plain_bmm).attribute(x, bg)


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


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_time_major_model_gets_its_rules_with_the_batch_on_dim_1(cell):
    from torch_imdb.explain import FastDeepShap

    torch.manual_seed(11)
    first, later = TimeMajor(cell, True).double().eval(), TimeMajor(cell, False).double().eval()
    later.load_state_dict(first.state_dict())
    g = torch.Generator().manual_seed(2)
    x, bg = torch.randint(1, 20, (3, 7), generator=g), torch.randint(0, 20, (5, 7), generator=g)
    x[1, :2] = 0
    ref = ShapDeepExplainer(first, torch.float64).attribute(x, bg)
    s = ShapDeepExplainer(later, torch.float64).attribute(x, bg)
    c = CaptumDeepLiftShap(later, torch.float64).attribute(x, bg)
    f = FastDeepShap(later, torch.float64).attribute(x, bg)
    assert np.abs(ref.values).max() > 1e-3 and np.abs(ref.residual).max() < 1e-10
    for other in (s, c, f):
        assert np.abs(other.values - ref.values).max() < 1e-10


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
