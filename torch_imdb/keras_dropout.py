"""Keras' recurrent dropout for ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` weights, with hand-written backward passes.

Keras 2's ``LSTMCell`` / ``GRUCell`` with ``implementation=1`` (the default the
original example ran with) draw one input mask and one recurrent mask PER GATE
(4 for the LSTM, 3 for the GRU, 1 for ``SimpleRNN``), each fixed over the time steps of a sequence:
``inputs_i = inputs * dp_mask[0]``, ``h_tm1_i = h_tm1 * rec_dp_mask[0]``, and so
on. ``implementation=2`` shares one mask between the gates. Both are offered:
``per_gate=True`` (K = number of gates) or ``per_gate=False`` (K = 1).

Recording 80 steps of small ops on autograd's tape costs more than the
arithmetic at batch 32, so each recurrence is a ``torch.autograd.Function``
that runs the forward without the tape, keeps what the backward needs, and
walks the steps back with a few fused ops each. Tensors are gate-major,
(T, G, B, H), so each gate's block is contiguous and one batched matmul per
step serves all gates with their own masks.

Equations are PyTorch's (so the weights load into ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``):
LSTM gates i, f, g, o; GRU gates r, z, n with ``n = tanh(x_n + r * (W_hn h + b_hn))``
and ``h' = (1 - z) * n + z * h``; the Elman RNN's ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``
runs on autograd's tape (one small op per step). Gate counts, weights and which
recurrence runs come from the cell's spec (:mod:`torch_imdb.cells`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torch_imdb.cells import GRU, LSTM, RNN_RELU, RNN_TANH, layer_weights, spec_of


def keras_masks(count: int, batch: int, width: int, rate: float, like: torch.Tensor) -> torch.Tensor:
    """``count`` inverted-dropout masks (count, batch, width), drawn once per sequence (Keras' ``_generate_dropout_mask``)."""
    ones = like.new_ones(count, batch, width)
    return F.dropout(ones, rate, training=True) if rate > 0 else ones


class _KerasLSTM(torch.autograd.Function):
    """Hidden states of an LSTM whose recurrent state is masked per gate before W_hh.

    xproj (T, 4, B, H): W_ih (x * in_mask) + b for every step and gate; w_hh (4H, H);
    rec_mask (K, B, H) with K in {1, 4}. Returns h_1 .. h_T as (T, B, H).
    """

    @staticmethod
    def forward(ctx, xproj: torch.Tensor, w_hh: torch.Tensor, rec_mask: torch.Tensor) -> torch.Tensor:
        T, G, B, H = xproj.shape
        u_t = w_hh.view(G, H, H).transpose(1, 2)  # gate k: z_k = hm_k @ U_k^T
        K = rec_mask.shape[0]
        h = xproj.new_zeros(B, H)
        c = xproj.new_zeros(B, H)
        acts = xproj.new_empty(T, G, B, H)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
        cells = xproj.new_zeros(T + 1, B, H)  # c_0 .. c_T
        hms = xproj.new_empty(T, K, B, H)  # masked h_0 .. h_{T-1}, the inputs of W_hh
        out = xproj.new_empty(T, B, H)
        for t in range(T):
            hm = torch.mul(h, rec_mask, out=hms[t])
            a = acts[t]
            torch.baddbmm(xproj[t], hm.expand(G, B, H), u_t, out=a)
            a[:2].sigmoid_()
            a[2].tanh_()
            a[3].sigmoid_()
            c = torch.addcmul(a[1] * c, a[0], a[2])
            cells[t + 1] = c
            h = torch.mul(a[3], torch.tanh(c), out=out[t])
        ctx.save_for_backward(acts, cells, hms, w_hh, rec_mask)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        acts, cells, hms, w_hh, rec_mask = ctx.saved_tensors
        T, G, B, H = acts.shape
        i, f, g, o = acts.unbind(1)
        tc = torch.tanh(cells[1:])
        # Local derivatives for all steps at once, so the loop is short:
        # d(i, f, g) = dc * coef[:, :3], d(o) = dh * coef[:, 3], then dc_prev = dc * f.
        coef = torch.stack([g * i * (1 - i), cells[:-1] * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], dim=1)
        dc_from_h = o * (1 - tc * tc)
        u = w_hh.view(G, H, H)
        dgates = torch.empty_like(acts)
        dh = torch.zeros_like(grad_out[0])
        dc = torch.zeros_like(dh)
        for t in range(T - 1, -1, -1):
            dh = dh + grad_out[t]
            dc = torch.addcmul(dc, dh, dc_from_h[t])
            d = dgates[t]
            torch.mul(coef[t, :3], dc, out=d[:3])
            torch.mul(coef[t, 3], dh, out=d[3])
            dc = dc * f[t]
            dh = (torch.bmm(d, u) * rec_mask).sum(0)
        grad_w = None
        if ctx.needs_input_grad[1]:
            lhs = dgates.permute(1, 3, 0, 2).reshape(G, H, T * B)
            rhs = hms.expand(T, G, B, H).transpose(0, 1).reshape(G, T * B, H)
            grad_w = torch.bmm(lhs, rhs).reshape(G * H, H)
        return dgates, grad_w, None


class _KerasGRU(torch.autograd.Function):
    """Hidden states of a GRU (PyTorch's equations) whose state is masked per gate before W_hh.

    xproj (T, 3, B, H): W_ih (x * in_mask) + b_ih; w_hh (3H, H); b_hh (3H,);
    rec_mask (K, B, H) with K in {1, 3}. Returns h_1 .. h_T as (T, B, H).
    """

    @staticmethod
    def forward(ctx, xproj: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor, rec_mask: torch.Tensor) -> torch.Tensor:
        T, G, B, H = xproj.shape
        u_t = w_hh.view(G, H, H).transpose(1, 2)
        b = b_hh.view(G, 1, H).expand(G, B, H)
        K = rec_mask.shape[0]
        h = xproj.new_zeros(B, H)
        rz = xproj.new_empty(T, 2, B, H)  # sigmoid(r), sigmoid(z)
        n = xproj.new_empty(T, B, H)
        rec = xproj.new_empty(T, G, B, H)  # W_h* hm + b_h*, the recurrent pre-activations
        hprev = xproj.new_empty(T, B, H)
        hms = xproj.new_empty(T, K, B, H)
        out = xproj.new_empty(T, B, H)
        for t in range(T):
            hprev[t] = h
            hm = torch.mul(h, rec_mask, out=hms[t])
            a = torch.baddbmm(b, hm.expand(G, B, H), u_t, out=rec[t])
            s = torch.sigmoid(torch.add(xproj[t, :2], a[:2], out=rz[t]), out=rz[t])
            nt = torch.tanh(torch.addcmul(xproj[t, 2], s[0], a[2]), out=n[t])
            h = torch.addcmul(nt, s[1], h - nt, out=out[t])  # (1 - z) n + z h
        ctx.save_for_backward(rz, n, rec, hprev, hms, w_hh, rec_mask)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        rz, n, rec, hprev, hms, w_hh, rec_mask = ctx.saved_tensors
        T, G, B, H = rec.shape
        r, z = rz.unbind(1)
        # Derivatives of h' w.r.t. the pre-activations, for all steps at once.
        dn_pre = (1 - z) * (1 - n * n)  # d h' / d (x_n + r * a_n)
        dz_pre = (hprev - n) * z * (1 - z)  # d h' / d (x_z + a_z)
        dr_pre = dn_pre * rec[:, 2] * r * (1 - r)  # d h' / d (x_r + a_r)
        u = w_hh.view(G, H, H)
        dx = torch.empty(T, G, B, H, dtype=rec.dtype, device=rec.device)  # grads of xproj
        da = torch.empty_like(dx)  # grads of the recurrent pre-activations
        dh = torch.zeros_like(grad_out[0])
        for t in range(T - 1, -1, -1):
            dh = dh + grad_out[t]
            torch.mul(dr_pre[t], dh, out=dx[t, 0])
            torch.mul(dz_pre[t], dh, out=dx[t, 1])
            torch.mul(dn_pre[t], dh, out=dx[t, 2])
            da[t, :2] = dx[t, :2]
            torch.mul(dx[t, 2], r[t], out=da[t, 2])
            dh = dh * z[t] + (torch.bmm(da[t], u) * rec_mask).sum(0)
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            lhs = da.permute(1, 3, 0, 2).reshape(G, H, T * B)
            rhs = hms.expand(T, G, B, H).transpose(0, 1).reshape(G, T * B, H)
            grad_w = torch.bmm(lhs, rhs).reshape(G * H, H)
        if ctx.needs_input_grad[2]:
            grad_b = da.sum(dim=(0, 2)).reshape(G * H)
        return dx, grad_w, grad_b, None


def _lstm(xproj, w_hh, b_ih, b_hh, rec_mask):
    if b_ih is not None:
        xproj = xproj + (b_ih + b_hh).view(4, 1, -1)  # the two LSTM biases only ever appear summed
    return _KerasLSTM.apply(xproj.contiguous(), w_hh, rec_mask)


def _gru(xproj, w_hh, b_ih, b_hh, rec_mask):
    if b_ih is not None:
        xproj = xproj + b_ih.view(3, 1, -1)
    return _KerasGRU.apply(xproj.contiguous(), w_hh, b_hh if b_hh is not None else w_hh.new_zeros(w_hh.shape[0]),
                           rec_mask)


def _elman(act):
    def run(xproj, w_hh, b_ih, b_hh, rec_mask):
        """xproj (T, 1, B, H) -> (T, B, H): one gate, so one recurrent mask; the tape keeps the steps."""
        if b_ih is not None:
            xproj = xproj + (b_ih + b_hh).view(1, 1, -1)
        h, out = xproj.new_zeros(xproj.shape[2:]), []
        for t in range(xproj.shape[0]):
            h = act(xproj[t, 0] + F.linear(h * rec_mask[0], w_hh))
            out.append(h)
        return torch.stack(out)
    return run


# Each cell's Keras recurrence: (xproj (T, G, B, H) without bias, w_hh, b_ih, b_hh, rec_mask (K, B, H)) -> (T, B, H).
RECURRENCES = {LSTM: _lstm, GRU: _gru, RNN_TANH: _elman(torch.tanh), RNN_RELU: _elman(torch.relu)}


def _direction(rnn: nn.Module, layer: int, direction: int, x: torch.Tensor, dropout: float,
               recurrent_dropout: float, per_gate: bool) -> torch.Tensor:
    """One layer and direction over x (B, T, E) in its own time order: hidden states (B, T, H)."""
    spec = spec_of(rnn)
    G, H = spec.gates, rnn.hidden_size
    B, T, E = x.shape
    K = G if per_gate else 1
    w_ih, w_hh, b_ih, b_hh = layer_weights(rnn, layer, direction)
    in_mask = keras_masks(K, B, E, dropout, x)
    rec_mask = keras_masks(K, B, H, recurrent_dropout, x)
    if K == 1:
        xproj = F.linear(x * in_mask[0, :, None], w_ih).view(B, T, G, H).permute(1, 2, 0, 3)
    else:
        xproj = torch.einsum("kbte,khe->tkbh", x.unsqueeze(0) * in_mask[:, :, None], w_ih.view(G, H, E))
    return RECURRENCES[spec](xproj, w_hh, b_ih, b_hh, rec_mask).transpose(0, 1)


def keras_dropout_rnn(x: torch.Tensor, rnn: nn.Module, dropout: float, recurrent_dropout: float,
                      per_gate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``rnn`` (a batch_first ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``) over x (B, T, E) with Keras dropout.

    Every layer and direction draws its own masks on its own input, as stacked and
    ``Bidirectional`` Keras layers do. Returns the last layer's output sequence
    (B, T, D*H) and the final hidden state (B, D*H): the forward direction's h_T
    and, for a bidirectional net, the reverse direction's state after x_0,
    concatenated (what ``torch.cat([h_n[-2], h_n[-1]], 1)`` gives for ``nn.LSTM``).
    """
    directions = 2 if rnn.bidirectional else 1
    out = x
    for layer in range(rnn.num_layers):
        seqs, finals = [], []
        for d in range(directions):
            inp = out.flip(1) if d else out
            hs = _direction(rnn, layer, d, inp, dropout, recurrent_dropout, per_gate)
            finals.append(hs[:, -1])
            seqs.append(hs.flip(1) if d else hs)
        out = torch.cat(seqs, dim=2) if directions > 1 else seqs[0]
    return out, torch.cat(finals, dim=1) if directions > 1 else finals[0]
