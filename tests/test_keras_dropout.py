"""The hand-written Keras-dropout recurrences against autograd and against the fused PyTorch modules."""

import pytest
import torch
from torch import nn

from torch_imdb import keras_dropout
from torch_imdb.cells import GRU, LSTM, RNN_RELU, RNN_TANH, spec_of
from torch_imdb.keras_dropout import _KerasGRU, _KerasLSTM, keras_dropout_rnn, keras_masks


def reference_rnn(x, rnn, in_masks, rec_masks):
    """The same network written with autograd, one explicit gate at a time.

    in_masks / rec_masks: per (layer, direction), tensors (K, B, width) with K = 1 or the gate count.
    """
    G = spec_of(rnn).gates
    H = rnn.hidden_size
    D = 2 if rnn.bidirectional else 1
    out, k = x, 0
    for layer in range(rnn.num_layers):
        seqs, finals = [], []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(rnn, "weight_ih" + sfx), getattr(rnn, "weight_hh" + sfx)
            b_ih, b_hh = getattr(rnn, "bias_ih" + sfx), getattr(rnn, "bias_hh" + sfx)
            m_in, m_rec = in_masks[k].expand(G, -1, -1), rec_masks[k].expand(G, -1, -1)
            k += 1
            inp = out.flip(1) if d else out
            h = inp.new_zeros(inp.shape[0], H)
            c = torch.zeros_like(h)
            hs = []
            for t in range(inp.shape[1]):
                xi = [(inp[:, t] * m_in[j]) @ w_ih[j * H : (j + 1) * H].t() + b_ih[j * H : (j + 1) * H] for j in range(G)]
                hh = [(h * m_rec[j]) @ w_hh[j * H : (j + 1) * H].t() + b_hh[j * H : (j + 1) * H] for j in range(G)]
                if G == 4:
                    i, f, g, o = (xi[j] + hh[j] for j in range(4))
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                elif G == 1:  # the Elman RNN
                    h = (torch.tanh if rnn.nonlinearity == "tanh" else torch.relu)(xi[0] + hh[0])
                else:
                    r, z = torch.sigmoid(xi[0] + hh[0]), torch.sigmoid(xi[1] + hh[1])
                    n = torch.tanh(xi[2] + r * hh[2])
                    h = (1 - z) * n + z * h
                hs.append(h)
            hs = torch.stack(hs, 1)
            finals.append(hs[:, -1])
            seqs.append(hs.flip(1) if d else hs)
        out = torch.cat(seqs, 2)
    return out, torch.cat(finals, 1)


def record_masks(monkeypatch):
    """Capture every mask keras_dropout_rnn draws, in order: in, rec for each layer and direction."""
    drawn = []

    def spy(*args):
        drawn.append(keras_masks(*args))
        return drawn[-1]

    monkeypatch.setattr(keras_dropout, "keras_masks", spy)
    return drawn


ARCHS = [(LSTM, 1, False), (GRU, 1, False), (RNN_TANH, 1, False), (LSTM, 2, True), (GRU, 2, True),
         (RNN_RELU, 2, True)]


@pytest.mark.parametrize("per_gate", [True, False], ids=["per-gate", "shared"])
@pytest.mark.parametrize("cls,layers,bi", ARCHS)
def test_gradients_equal_autograd(monkeypatch, cls, layers, bi, per_gate):
    torch.manual_seed(0)
    rnn = cls.make(5, 4, num_layers=layers, bidirectional=bi, batch_first=True).double()
    with torch.no_grad():
        for p in rnn.parameters():
            p.normal_()  # both GRU biases and every LSTM bias matter
    x = torch.randn(3, 6, 5, dtype=torch.float64, requires_grad=True)
    drawn = record_masks(monkeypatch)
    out, final = keras_dropout_rnn(x, rnn, 0.3, 0.4, per_gate=per_gate)
    K = cls.gates if per_gate else 1
    assert all(m.shape[0] == K for m in drawn) and len(drawn) == 2 * layers * (2 if bi else 1)
    ref_out, ref_final = reference_rnn(x, rnn, drawn[0::2], drawn[1::2])
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(final, ref_final, atol=1e-12, rtol=0)
    weights = torch.randn_like(out)
    params = [x, *rnn.parameters()]
    grads = torch.autograd.grad((out * weights).sum() + final.sum(), params)
    ref_grads = torch.autograd.grad((ref_out * weights).sum() + ref_final.sum(), params)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=0)


@pytest.mark.parametrize("K", [1, 4])
def test_lstm_function_gradcheck(K):
    torch.manual_seed(0)
    xproj = torch.randn(5, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(K, 2, 3) > 0.4).double() / 0.6
    assert torch.autograd.gradcheck(lambda a, b: _KerasLSTM.apply(a, b, mask), (xproj, w))


@pytest.mark.parametrize("K", [1, 3])
def test_gru_function_gradcheck(K):
    torch.manual_seed(0)
    xproj = torch.randn(5, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(K, 2, 3) > 0.4).double() / 0.6
    assert torch.autograd.gradcheck(lambda a, c, d: _KerasGRU.apply(a, c, d, mask), (xproj, w, b))


@pytest.mark.parametrize("cls,layers,bi", ARCHS)
def test_zero_rates_equal_the_fused_module(cls, layers, bi):
    torch.manual_seed(1)
    rnn = cls.make(5, 4, num_layers=layers, bidirectional=bi, batch_first=True).double()
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    out, h = rnn(x)
    h = h[0] if isinstance(h, tuple) else h
    ours, final = keras_dropout_rnn(x, rnn, 0.0, 0.0)
    torch.testing.assert_close(ours, out, atol=1e-12, rtol=0)
    torch.testing.assert_close(final, torch.cat(list(h[-(2 if bi else 1) :]), 1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_per_gate_masks_differ_between_gates_and_hold_over_steps(monkeypatch, cls):
    """Each gate sees its own input mask, and the same one at every step."""
    torch.manual_seed(2)
    rnn = cls(6, 5, batch_first=True)
    G = spec_of(rnn).gates
    drawn = record_masks(monkeypatch)
    seen = {}
    function = _KerasLSTM if cls is nn.LSTM else _KerasGRU
    real = function.apply
    monkeypatch.setattr(function, "apply", lambda xproj, *rest: seen.setdefault("xproj", xproj) is not None
                        and real(xproj, *rest))
    x = torch.randn(4, 1, 6).expand(4, 9, 6)  # the same input at all 9 steps
    keras_dropout_rnn(x, rnn, 0.5, 0.5, per_gate=True)
    in_mask, rec_mask = drawn
    assert in_mask.shape == (G, 4, 6) and rec_mask.shape == (G, 4, 5)
    for mask in (in_mask, rec_mask):
        assert set(mask.unique().tolist()) <= {0.0, 2.0}
        assert all(not torch.equal(mask[a], mask[b]) for a in range(G) for b in range(a))
    xproj = seen["xproj"]  # (T, G, B, H)
    assert all(torch.equal(xproj[t], xproj[0]) for t in range(9)), "input masks must not change between steps"
    H = 5
    for k in range(G):
        expected = (x[:, 0] * in_mask[k]) @ rnn.weight_ih_l0[k * H : (k + 1) * H].t()
        expected = expected + rnn.bias_ih_l0[k * H : (k + 1) * H] + (rnn.bias_hh_l0[k * H : (k + 1) * H] if G == 4 else 0)
        torch.testing.assert_close(xproj[0, k], expected, atol=1e-6, rtol=1e-5)
