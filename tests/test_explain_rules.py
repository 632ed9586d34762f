import math

import numpy as np
import torch

from torch_imdb.explain.backends import ShapDeepExplainer
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.explain.rules import bilinear, rescale
from torch_imdb.model import ModelConfig, SentimentRNN


def sig(v):
    return 1 / (1 + math.exp(-v))


def test_product_rule_is_shapley_and_exact():
    a = torch.tensor([[2.0], [0.5]], requires_grad=True)  # [input; reference]
    b = torch.tensor([[3.0], [-1.0]], requires_grad=True)
    bilinear(torch.mul, a, b).sum().backward()
    assert a.grad[0].item() == (3.0 - 1.0) / 2 and b.grad[0].item() == (2.0 + 0.5) / 2
    # Δa·m_a + Δb·m_b = Δ(ab)
    assert (2.0 - 0.5) * a.grad[0].item() + (3.0 + 1.0) * b.grad[0].item() == 2.0 * 3.0 - 0.5 * -1.0


def test_rescale_never_nan_and_falls_back_to_gradient():
    x = torch.tensor([0.3, 1.0, 2.0])
    r = torch.tensor([0.3, 1.0 + 1e-8, -1.0])
    d_ref = torch.sigmoid(r) * (1 - torch.sigmoid(r))
    m = rescale(x - r, torch.sigmoid(x) - torch.sigmoid(r), d_ref)
    assert torch.isfinite(m).all()
    assert m[0] == d_ref[0] and m[1] == d_ref[1]  # |dz| below 1e-6: the derivative at the reference
    assert torch.isclose(m[2], (torch.sigmoid(x[2]) - torch.sigmoid(r[2])) / 3.0)


def one_unit_model():
    """A one-step LSTM with one unit and two embedding dimensions, weights set by hand."""
    model = SentimentRNN(ModelConfig(vocab_size=4, embed_dim=2, hidden=1, dropout=0, recurrent_dropout=0)).double()
    with torch.no_grad():
        model.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.5, -2.0]], dtype=torch.float64))
        model.rnn.weight_ih_l0.copy_(torch.tensor([[0.7, -0.4], [0.2, 0.9], [-1.1, 0.5], [0.6, 0.3]], dtype=torch.float64))
        model.rnn.bias_ih_l0.copy_(torch.tensor([0.1, 1.0, -0.2, 0.3], dtype=torch.float64))
        model.fc.weight.fill_(2.5)
        model.fc.bias.fill_(-0.4)
    return model.eval()


def hand_attribution():
    """DeepLIFT with rescale + Shapley product rules, worked out by hand for x = [1.5, -2], r = [0, 0]."""
    W = [[0.7, -0.4], [0.2, 0.9], [-1.1, 0.5], [0.6, 0.3]]
    bias = [0.1, 1.0, -0.2, 0.3]
    x, r = [1.5, -2.0], [0.0, 0.0]
    zx = [W[k][0] * x[0] + W[k][1] * x[1] + bias[k] for k in range(4)]
    zr = [W[k][0] * r[0] + W[k][1] * r[1] + bias[k] for k in range(4)]
    act = lambda z: [sig(z[0]), sig(z[1]), math.tanh(z[2]), sig(z[3])]  # noqa: E731
    ax, ar = act(zx), act(zr)
    cx, cr = ax[0] * ax[2], ar[0] * ar[2]  # c1 = i*g (c0 = 0)
    ux, ur = math.tanh(cx), math.tanh(cr)
    hx, hr = ax[3] * ux, ar[3] * ur
    yx, yr = sig(2.5 * hx - 0.4), sig(2.5 * hr - 0.4)
    m_out = (yx - yr) / (2.5 * hx - 2.5 * hr) * 2.5  # d y / d h
    m_o = m_out * (ux + ur) / 2  # Shapley for h = o*u
    m_u = m_out * (ax[3] + ar[3]) / 2
    m_c = m_u * (ux - ur) / (cx - cr)  # rescale through tanh
    m_i = m_c * (ax[2] + ar[2]) / 2  # Shapley for c = i*g
    m_g = m_c * (ax[0] + ar[0]) / 2
    m_z = [m_i * (ax[0] - ar[0]) / (zx[0] - zr[0]), 0.0,  # f*c0 with c0 = 0 contributes nothing
           m_g * (ax[2] - ar[2]) / (zx[2] - zr[2]), m_o * (ax[3] - ar[3]) / (zx[3] - zr[3])]
    per_dim = [sum(m_z[k] * W[k][e] for k in range(4)) * (x[e] - r[e]) for e in range(2)]
    return per_dim, yx, yr


def test_hand_computed_one_step_one_unit():
    per_dim, yx, yr = hand_attribution()
    assert abs(sum(per_dim) - (yx - yr)) < 1e-12  # the hand rules are complete
    model = one_unit_model()
    ids, bg = torch.tensor([[3]]), torch.tensor([[0]])
    for engine in (ShapDeepExplainer(model, torch.float64), FastDeepShap(model, torch.float64)):
        res = engine.attribute(ids, bg)
        assert abs(res.values[0, 0] - sum(per_dim)) < 1e-12
        assert abs(res.outputs[0] - yx) < 1e-12
    # per-dimension split, which completeness alone does not fix: shap's raw values per embedding dim
    import shap

    from torch_imdb.explain.backends import explainable_model
    twin = explainable_model(model, 1, torch.float64)
    phis = shap.DeepExplainer(twin, model.embedding(bg)).shap_values(model.embedding(ids))
    np.testing.assert_allclose(np.asarray(phis)[0, 0, :, 0], per_dim, atol=1e-12)
