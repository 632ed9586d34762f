"""The explainable twin against nn.LSTM / nn.GRU, and shap and Captum on whole user models through the transform."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import CELLS, MATRIX, UserModel, case_id, matrix_case, random_inputs, scaled
from torch_imdb.errors import UsageError
from torch_imdb.explain.backends import CaptumDeepLiftShap, ShapDeepExplainer
from torch_imdb.explain.transform import make_explainable
from torch_imdb.explain.twin import ExplainableRNN


@pytest.mark.parametrize("case", MATRIX, ids=case_id)
def test_matrix_shap_and_captum_exact_on_the_whole_model(case):
    cell, _, _, tokens, _ = case
    model, x, bg, target = matrix_case(case)
    twin = make_explainable(model, steps=5)
    assert isinstance(twin.model.rnn, ExplainableRNN) and CELLS[cell].matches(model.rnn), "the original is untouched"
    torch.testing.assert_close(twin(x), model(x), atol=1e-10, rtol=0)
    s = ShapDeepExplainer(model, torch.float64).attribute(x, bg, target=target)  # shap's additivity check is on
    c = CaptumDeepLiftShap(model, torch.float64, per_call=2).attribute(x, bg, target=target)
    assert s.values.shape == ((2, 5) if tokens else (2, 5, 4))
    np.testing.assert_allclose(s.outputs, model(x)[:, target].detach().numpy(), atol=1e-10)
    assert np.abs(s.residual).max() < 1e-6 and np.abs(c.residual).max() < 1e-6
    assert c.extra["max_abs_delta"].max() < 1e-5
    assert np.abs(s.values - c.values).max() < 1e-5
    assert np.abs(s.values).max() > 1e-4, "a vacuous explanation (values ~0) would pass the 1e-10 checks above"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [True, False])
def test_drop_in_same_outputs_with_states_and_unbatched(cell, batch_first):
    torch.manual_seed(3)
    rnn = CELLS[cell].make(4, 3, num_layers=2, bidirectional=True, batch_first=batch_first).double().eval()
    twin = ExplainableRNN(rnn, steps=9)
    assert dict(twin.named_parameters()).keys() == dict(rnn.named_parameters()).keys()
    x = torch.randn(6, 7, 4, dtype=torch.float64)  # (T, batch) or (batch, T): both are 6 x 7
    h0 = torch.randn(4, 7 if not batch_first else 6, 3, dtype=torch.float64)
    hx = (h0, torch.randn_like(h0)) if cell == "lstm" else h0
    for args in [(x,), (x, hx), (x[:, 0] if not batch_first else x[0],)]:
        expected, got = rnn(*args), twin(*args)
        flat = lambda o: [o[0], *(o[1] if isinstance(o[1], tuple) else (o[1],))]  # noqa: E731
        for e, g in zip(flat(expected), flat(got)):
            assert e.shape == g.shape
            torch.testing.assert_close(g, e, atol=1e-10, rtol=0)


def test_hand_computed_one_step_gru():
    """One unit, one step, one feature, h0 = 0: the DeepLIFT rules applied by hand, rule by rule."""
    gru = nn.GRU(1, 1, batch_first=True).double()
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.tensor([[0.8], [-1.3], [1.7]], dtype=torch.float64))  # r, z, n
        gru.bias_ih_l0.copy_(torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64))
        gru.bias_hh_l0.copy_(torch.tensor([-0.4, 0.5, 0.9], dtype=torch.float64))  # b_hn = 0.9 sits inside r * (W_hn h + b_hn)

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = gru

        def forward(self, x):
            return self.rnn(x)[1][0]

    x, ref = 1.1, -0.6
    sig, tanh = lambda v: 1 / (1 + np.exp(-v)), np.tanh  # noqa: E731
    w_r, w_z, w_n = 0.8, -1.3, 1.7
    pre = {v: dict(r=w_r * v + 0.2 - 0.4, z=w_z * v - 0.1 + 0.5) for v in (x, ref)}
    r = {v: sig(pre[v]["r"]) for v in (x, ref)}
    z = {v: sig(pre[v]["z"]) for v in (x, ref)}
    a_n = 0.9  # W_hn h + b_hn with h = 0: the same for input and reference
    zn = {v: w_n * v + 0.3 + r[v] * a_n for v in (x, ref)}
    n = {v: tanh(zn[v]) for v in (x, ref)}
    h = {v: (1 - z[v]) * n[v] for v in (x, ref)}
    m_r = (r[x] - r[ref]) / (pre[x]["r"] - pre[ref]["r"])  # rescale rule, sigmoid r
    m_z = (z[x] - z[ref]) / (pre[x]["z"] - pre[ref]["z"])  # rescale rule, sigmoid z
    m_n = (n[x] - n[ref]) / (zn[x] - zn[ref])  # rescale rule, tanh n
    # Shapley rule on r * a_n (a_n constant): Δ = Δr * a_n
    d_zn = w_n + m_r * w_r * a_n  # per unit Δx
    # Shapley rule on (1 - z) * n: Δ = -Δz * mean(n) + Δn * mean(1 - z); z * h with h = 0 adds nothing
    per_unit = -m_z * w_z * (n[x] + n[ref]) / 2 + m_n * d_zn * (2 - z[x] - z[ref]) / 2
    phi = per_unit * (x - ref)
    assert abs(phi - (h[x] - h[ref])) < 1e-12  # the hand rules are complete
    inputs = torch.tensor([[[x]]], dtype=torch.float64)
    baselines = torch.tensor([[[ref]], [[ref]]], dtype=torch.float64)
    for engine in (ShapDeepExplainer(Head(), torch.float64), CaptumDeepLiftShap(Head(), torch.float64)):
        res = engine.attribute(inputs, baselines)
        assert abs(res.values[0, 0, 0] - phi) < 1e-12, engine.method
        assert abs(res.outputs[0] - h[x]) < 1e-12


def test_refuses_proj_size():
    with pytest.raises(UsageError, match="proj_size"):
        ExplainableRNN(nn.LSTM(4, 3, proj_size=2), steps=5)


@pytest.mark.parametrize("cell", CELLS)
def test_packed_sequences_run_each_sequence_over_its_own_steps(cell):
    torch.manual_seed(4)
    rnn = CELLS[cell].make(4, 3, num_layers=2, bidirectional=True, batch_first=True).double().eval()
    twin = ExplainableRNN(rnn, steps=5)
    x, lengths = torch.randn(3, 5, 4, dtype=torch.float64), torch.tensor([2, 5, 3])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    (out_e, state_e), (out_g, state_g) = rnn(packed), twin(packed)
    torch.testing.assert_close(out_g.data, out_e.data, atol=1e-12, rtol=0)
    assert torch.equal(out_g.batch_sizes, out_e.batch_sizes)
    for e, g in zip(state_e if isinstance(state_e, tuple) else (state_e,),
                    state_g if isinstance(state_g, tuple) else (state_g,)):
        torch.testing.assert_close(g, e, atol=1e-12, rtol=0)


def test_refuses_dropout_in_training_mode():
    twin = ExplainableRNN(nn.LSTM(4, 3, num_layers=2, dropout=0.3, batch_first=True).train(), steps=5)
    with pytest.raises(UsageError, match="eval"):
        twin(torch.randn(2, 5, 4))
    twin.eval()(torch.randn(2, 5, 4))  # in eval mode the dropout is off and nothing is refused


def test_refuses_longer_sequences_and_models_it_cannot_cover():
    twin = ExplainableRNN(nn.GRU(4, 3, batch_first=True), steps=5)
    with pytest.raises(UsageError, match="at most 5 steps"):
        twin(torch.randn(2, 6, 4))
    with pytest.raises(UsageError, match="LSTMCell"):
        make_explainable(nn.Sequential(nn.LSTMCell(4, 3)), steps=5)


def test_target_out_of_range_is_clear():
    model = scaled(UserModel("gru", 1, False, True, "logits"), 0)
    x, bg = random_inputs(True, 0)
    with pytest.raises(UsageError, match="target 3"):
        ShapDeepExplainer(model, torch.float64).attribute(x, bg, target=3)


def test_readme_explain_your_own_model_runs(capsys):
    """The README's example, run as written: shap, Captum and the fast engine agree and add up on a packed BiLSTM
    with attention."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Explain your own model") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    shap_res, captum_res = namespace["by_shap"], namespace["by_captum"]
    assert shap_res.values.shape == (4, 20)
    assert np.abs(shap_res.values - captum_res.values).max() < 1e-6
    assert np.abs(shap_res.residual).max() < 1e-6 and np.abs(captum_res.residual).max() < 1e-6
    assert np.all(shap_res.values[2, 9:] == 0) and np.abs(shap_res.values[2, :9]).max() > 1e-4
    assert np.abs(namespace["by_fast"].values - shap_res.values).max() < 1e-6  # the fast engine, packed
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "(4, 20)" and all(float(v) < 1e-6 for v in printed[1].split()) and float(printed[2]) < 1e-6
