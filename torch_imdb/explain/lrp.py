"""Layer-wise relevance propagation for the LSTM, as Arras et al. define it (2017).

"Explaining Recurrent Neural Network Predictions in Sentiment Analysis" (Arras,
Montavon, Müller, Samek; WASSA 2017): the epsilon rule (eps = 0.001, no bias
share) on every linear map, and the signal-take-all rule on the gate products:
of h = o * tanh(c) all relevance goes to c, of i * g all goes to g, none to the
gates. The sum c_t = f * c_{t-1} + i * g is a linear map with both summands as
inputs. Relevance starts as the explained score (the logit of P(positive)) on
the head and flows back through time; a token's relevance is the sum over its
embedding dimensions. The rules were checked against the authors' public numpy
reference (``lrp_linear`` and ``LSTM_bidi.lrp``); the code is ours.

Covers the 1-layer, one-direction LSTM on token ids (the seed model); relevance
needs no background, so it is computed per review (n, T).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from torch_imdb.errors import UsageError
from torch_imdb.cells import LSTM
from torch_imdb.explain.cells import lstm_trace
from torch_imdb.model import SentimentRNN


def _stabilised(t: torch.Tensor, eps: float) -> torch.Tensor:
    """t + eps * sign(t), with sign(0) = +1: the epsilon rule's denominator."""
    return t + eps * torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


@torch.no_grad()
def lrp_lstm(model: SentimentRNN, ids: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Relevance (n, T) of each token of ids (n, T) for the logit of P(positive)."""
    cfg = model.config
    if not LSTM.matches(model.rnn) or cfg.layers != 1 or cfg.bidirectional:
        raise UsageError(f"LRP is implemented for a 1-layer LSTM; this model is a {cfg.describe()}")
    rnn, head = model.rnn, model.fc
    x = model.embedding(ids)
    trace = lstm_trace(x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0, reverse=False)
    tr, h = trace.slab, trace.h
    n, T, H = h.shape
    w_g_ih = rnn.weight_ih_l0[2 * H : 3 * H]  # the cell input g's rows
    w_g_hh = rnn.weight_hh_l0[2 * H : 3 * H]
    score = F.linear(h[:, -1], head.weight, head.bias)[:, 0]  # (n,): the logit
    # head: s = W h_T + b, relevance s, no bias share
    r_h = h[:, -1] * head.weight[0] * (score / _stabilised(score, eps))[:, None]
    r_c = torch.zeros_like(r_h)
    relevance = x.new_zeros(n, T)
    for t in range(T - 1, -1, -1):
        i, f, g = tr.act[t][:, :H], tr.act[t][:, H : 2 * H], tr.act[t][:, 2 * H : 3 * H]
        c, c_prev = tr.c[t], tr.cprev[t]
        r_c = r_c + r_h  # h = o * tanh(c): all to c
        share = r_c / _stabilised(c, eps)
        r_g = i * g * share  # c = f * c_prev + i * g: a sum of two inputs; of i * g all goes to g
        r_c = f * c_prev * share
        m = r_g / _stabilised(tr.z[t][:, 2 * H : 3 * H], eps)  # g = tanh(W_ig x + W_hg h + b): epsilon rule
        relevance[:, t] = (x[:, t] * (m @ w_g_ih)).sum(-1)
        h_prev = h[:, t - 1] if t > 0 else torch.zeros_like(r_h)
        r_h = h_prev * (m @ w_g_hh)
    return relevance
