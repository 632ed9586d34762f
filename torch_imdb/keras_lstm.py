"""LSTM recurrence with Keras' recurrent-dropout mask and a hand-written backward.

Recording 80 steps of small ops on autograd's tape costs more than the
arithmetic at batch 32 (measured: ~66 s per epoch). This Function runs the
forward without the tape, keeps the gate values, and walks the steps back
with a handful of fused tensor ops each (~25 s per epoch on 2 cores).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


class _MaskedLSTM(torch.autograd.Function):
    """h_T of an LSTM whose recurrent state is multiplied by a fixed mask before W_hh.

    Inputs: xproj (B, T, 4H) = W_ih x_t + b for all steps; w_hh (4H, H); mask (B, H).
    Output: h_T (B, H). Gate order i, f, g, o (PyTorch's and Keras').
    """

    @staticmethod
    def forward(ctx, xproj: torch.Tensor, w_hh: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, G = xproj.shape
        H = G // 4
        w_hh_t = w_hh.t()
        h = xproj.new_zeros(B, H)
        c = xproj.new_zeros(B, H)
        acts = xproj.new_empty(T, B, G)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o) per step
        cells = xproj.new_empty(T + 1, B, H)  # c_0 .. c_T
        hs = xproj.new_empty(T, B, H)  # masked h_0 .. h_{T-1}, the inputs of W_hh
        cells[0] = 0
        for t in range(T):
            hm = h * mask
            hs[t] = hm
            gates = torch.addmm(xproj[:, t], hm, w_hh_t)
            a = acts[t]
            torch.sigmoid(gates, out=a)
            a[:, 2 * H : 3 * H].copy_(torch.tanh(gates[:, 2 * H : 3 * H]))
            i, f, g, o = a.chunk(4, dim=1)
            c = torch.addcmul(f * c, i, g)
            cells[t + 1] = c
            h = o * torch.tanh(c)
        ctx.save_for_backward(acts, cells, hs, w_hh, mask)
        return h

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        acts, cells, hs, w_hh, mask = ctx.saved_tensors
        T, B, G = acts.shape
        H = G // 4
        i, f, g, o = acts.split(H, dim=2)
        tc = torch.tanh(cells[1:])
        # Local derivatives for all steps at once, so the loop below is short:
        # d gates = [dc, dc, dc, dh] * coef, then dc_prev = dc * f.
        coef = torch.cat([g * i * (1 - i), cells[:-1] * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], dim=2)
        dc_from_h = o * (1 - tc * tc)
        dgates = torch.empty_like(acts)
        dh = grad_h
        dc = torch.zeros_like(grad_h)
        for t in range(T - 1, -1, -1):
            dc = torch.addcmul(dc, dh, dc_from_h[t])
            d = dgates[t]
            d[:, : 3 * H].copy_((dc.unsqueeze(1) * coef[t, :, : 3 * H].view(B, 3, H)).view(B, 3 * H))
            torch.mul(dh, coef[t, :, 3 * H :], out=d[:, 3 * H :])
            dc = dc * f[t]
            dh = (d @ w_hh) * mask
        grad_xproj = dgates.transpose(0, 1)
        grad_w_hh = dgates.reshape(T * B, G).t() @ hs.reshape(T * B, H) if ctx.needs_input_grad[1] else None
        return grad_xproj, grad_w_hh, None


def keras_dropout_lstm(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor,
                       dropout: float, recurrent_dropout: float) -> torch.Tensor:
    """Final hidden state (B, H) of an LSTM over x (B, T, E), Keras dropout semantics.

    One input mask (B, 1, E) and one recurrent mask (B, H) per sequence, drawn
    once and reused at every step; inverted dropout (kept units scaled by 1/(1-p)).
    """
    batch = x.shape[0]
    in_mask = F.dropout(x.new_ones(batch, 1, x.shape[2]), dropout, training=True)
    rec_mask = F.dropout(x.new_ones(batch, w_hh.shape[1]), recurrent_dropout, training=True)
    xproj = F.linear(x * in_mask, w_ih, bias)
    return _MaskedLSTM.apply(xproj, w_hh, rec_mask)
