"""The explainable twin: a drop-in ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` unrolled into ops the transform has rules for.

:class:`ExplainableRNN` takes a trained recurrent module and computes the same
function (same weights, same ``(output, h_n)`` / ``(output, (h_n, c_n))``),
unrolled over time in plain torch ops, each step its cell spec's ``step``
(:mod:`.cells`): the fused kernels of ``nn.LSTM`` have no rule, their
sigmoids, tanhs and products do. Under the transform's rule mode
(:mod:`.transform`) the sigmoids, tanhs and relus get the rescale rule and every
product of two varying tensors (the LSTM's f·c, i·g, o·tanh(c); the GRU's
r·(W_hn h + b_hn), (1-z)·n, z·h) the Shapley rule; the linear maps need none. The
equations are PyTorch's.

A ``PackedSequence`` input runs each sequence over its own steps only (the state
is held after a sequence's last step; outputs past it are zero), as ``nn.LSTM`` does.
The rules live in autograd functions, not in module state, so one twin may be
called any number of times in a forward pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from torch_imdb.errors import UsageError
from torch_imdb.cells import layer_weights, spec_of, steps as time_order
from torch_imdb.explain.marks import explained, mark_batch
from torch_imdb.explain.stack import FusedRecurrence, RecurrentStack, pairs_of


def _refuse(rnn: nn.Module) -> None:
    if getattr(rnn, "proj_size", 0):
        raise UsageError(f"{type(rnn).__name__} with proj_size={rnn.proj_size} is not supported by the explainable "
                         "twin; use an LSTM without a projection")


def _marked_state(state):
    """The final states (layers * directions, batch, H), or an LSTM's pair of them: the batch on dim 1."""
    if isinstance(state, tuple):
        return tuple(mark_batch(t, 1) if isinstance(t, torch.Tensor) and t.dim() == 3 else t for t in state)
    return mark_batch(state, 1) if isinstance(state, torch.Tensor) and state.dim() == 3 else state


class ExplainableRNN(nn.Module):
    """Drop-in replacement for a trained ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``, unrolled for up to ``steps`` time steps.

    Same parameters (names and values), same call: ``forward(input, hx=None)`` with
    input (batch, T, F) if ``batch_first`` else (T, batch, F), or unbatched (T, F);
    or a ``PackedSequence``; returns ``(output, h_n)``, or ``(output, (h_n, c_n))`` for a cell
    with a cell state (the LSTM), output (batch, T, D*H) (a ``PackedSequence`` for a packed input), h_n and
    c_n (layers*D, batch, H). Refuses, in one line, ``proj_size``, inter-layer dropout in
    training mode and sequences longer than ``steps``.
    """

    def __init__(self, rnn: nn.Module, steps: int) -> None:
        super().__init__()
        _refuse(rnn)
        self.spec = spec_of(rnn)
        for name, value in self.spec.options:  # nn.RNN's nonlinearity, readable as on the original
            setattr(self, name, value)
        self.input_size, self.hidden_size = rnn.input_size, rnn.hidden_size
        self.num_layers, self.bidirectional = rnn.num_layers, rnn.bidirectional
        self.batch_first, self.bias, self.dropout = rnn.batch_first, rnn.bias, rnn.dropout
        self.steps = steps
        self.fused = False  # make_explainable(..., fused=True): the engine's fused rule where the batch allows it
        self.grid_shape: tuple[int, int] | None = None  # (B, n) when the caller laid out its pairs so
        self.compile = False  # the fused rule's windows compiled (FusedDeepShap(compile=True))
        # the fused rule's RecurrentStack, with its kept reference traces; an engine that rebuilds the copy may hand
        # it the stack of the copy before (FusedDeepShap does), which serves only while it fits the weights
        self.stack: RecurrentStack | None = None
        for name, p in rnn.named_parameters():
            self.register_parameter(name, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        self.train(rnn.training)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def forward(self, input: torch.Tensor, hx=None):
        if isinstance(input, PackedSequence):
            padded, lengths = pad_packed_sequence(input, batch_first=True)
            output, state = self._run(padded, hx, lengths)
            return pack_padded_sequence(output, lengths, batch_first=True, enforce_sorted=False), _marked_state(state)
        x = input if self.batch_first or input.dim() == 2 else input.transpose(0, 1)
        output, state = self._fused(x) if self.fused and hx is None else (None, None)
        if output is None:
            output, state = self._run(x, hx, None)
        if self.batch_first or input.dim() == 2:
            return mark_batch(output, 0), _marked_state(state)
        return mark_batch(output.transpose(0, 1).contiguous(), 1), _marked_state(state)  # contiguous as nn.LSTM's

    def _fused(self, x: torch.Tensor):
        """(output, state) by the engine's fused rule (:class:`~.stack.FusedRecurrence`), or (None, None) where it
        does not apply: an input that is not explained, unbatched, or not an [inputs; references] batch of two
        equal halves. Pairs that are no grid of distinct rows run pair by pair (:func:`~.stack.pairs_of`)."""
        if x.dim() != 3 or not explained(x) or x.shape[0] % 2:
            return None, None
        if self.stack is None or not self.stack.fits(self, self.compile):
            self.stack = RecurrentStack(self, self.weight_hh_l0.dtype, self.compile, spec=self.spec)
        output, h_n, c_n = FusedRecurrence.apply(x, self.stack, pairs_of(x, self.grid_shape))
        return output, ((h_n, c_n) if self.spec.cell_state else h_n)

    def _run(self, x: torch.Tensor, hx, lengths: torch.Tensor | None):
        """The recurrence over batch-first x (batch, T, F) or unbatched (T, F); with ``lengths``
        (batch,) each sequence stops after its own steps."""
        if self.training and self.dropout > 0 and self.num_layers > 1:
            raise UsageError(f"the explainable twin runs in eval mode only: its {type(self).__name__} has "
                             f"dropout={self.dropout} between layers; call .eval() first")
        unbatched = x.dim() == 2
        x = x.unsqueeze(0) if unbatched else x  # (batch, T, F) from here on
        B, T, _ = x.shape
        if T > self.steps:
            raise UsageError(f"the explainable twin was built for at most {self.steps} steps, got {T}; "
                             f"build it with steps >= {T}")
        H, L, D = self.hidden_size, self.num_layers, self.directions
        h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
        if unbatched:
            h0 = h0.unsqueeze(1) if h0 is not None else None
            c0 = c0.unsqueeze(1) if c0 is not None else None
        # valid[:, t]: step t belongs to the sequence (a constant of the explanation: from the lengths)
        valid = None if lengths is None else (torch.arange(T)[None, :] < lengths[:, None]).to(x.device)[..., None]
        h_n, c_n, out = [], [], x
        for layer in range(L):
            seqs = []
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = layer_weights(self, layer, d)
                xproj = F.linear(out, w_ih, b_ih)  # (batch, T, G*H), linear: no rule needed
                h = h0[k] if h0 is not None else x.new_zeros(B, H)
                c = (c0[k] if c0 is not None else x.new_zeros(B, H)) if self.spec.cell_state else None
                hs = [None] * T
                for t in time_order(T, bool(d)):
                    h_t, c_t = self.spec.step(xproj[:, t], F.linear(h, w_hh, b_hh), h, c)
                    if valid is None:
                        h, c, hs[t] = h_t, c_t, h_t
                    else:  # past a sequence's end its state is held and its output is zero
                        h = torch.where(valid[:, t], h_t, h)
                        c = torch.where(valid[:, t], c_t, c) if c_t is not None else None
                        hs[t] = torch.where(valid[:, t], h_t, torch.zeros_like(h_t))
                seqs.append(torch.stack(hs, dim=1))
                h_n.append(h)
                c_n.append(c)
            out = torch.cat(seqs, dim=2) if D > 1 else seqs[0]
        h_n = torch.stack(h_n)
        output = out
        if unbatched:
            output, h_n = output.squeeze(0), h_n.squeeze(1)
        if not self.spec.cell_state:
            return output, h_n
        c_n = torch.stack(c_n)
        return output, (h_n, c_n.squeeze(1) if unbatched else c_n)
