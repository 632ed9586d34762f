"""The explainable twin: a drop-in ``nn.LSTM`` / ``nn.GRU`` that DeepLIFT hooks explain exactly.

:class:`ExplainableRNN` takes a trained ``nn.LSTM`` or ``nn.GRU`` and computes
the same function (same weights, same ``(output, h_n)`` / ``(output, (h_n, c_n))``),
unrolled over time so that shap.DeepExplainer and Captum's DeepLiftShap
explain it exactly:

1. every sigmoid and tanh is its own ``nn.Sigmoid``/``nn.Tanh`` instance per
   layer, direction and time step: both libraries store a module's last
   input/output in a forward hook, so a module called T times would keep
   only the last call;
2. every product of two varying tensors is a :class:`Product`, which uses the
   Shapley rule while attributions are computed: the LSTM's f·c, i·g and
   o·tanh(c); the GRU's r·(W_hn h + b_hn), (1-z)·n and z·h;
3. every activation's input is a tensor used nowhere else (``tanh(c.clone())``):
   Captum hooks the module's input *tensor*, so if c also fed the next step's
   forget product its hook would replace the whole gradient of c.

Linear maps use functional calls on the twin's own parameters and need no
rule: DeepLIFT on a linear map is its gradient. The equations are PyTorch's
(gate order i, f, g, o for the LSTM; r, z, n for the GRU).

:func:`make_explainable` applies this to a whole model: it returns a copy in
which every ``nn.LSTM`` / ``nn.GRU`` is a twin and every ``nn.Embedding`` also
accepts already-embedded input, so the libraries can start at the embedding output.
"""

from __future__ import annotations

import copy
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from torch_imdb.errors import UsageError
from torch_imdb.explain.cells import GRUStep, LSTMStep
from torch_imdb.keras_dropout import cell_name


def _refuse(rnn: nn.Module) -> None:
    if getattr(rnn, "proj_size", 0):
        raise UsageError(f"{type(rnn).__name__} with proj_size={rnn.proj_size} is not supported by the explainable "
                         "twin; use an LSTM without a projection")


class ExplainableRNN(nn.Module):
    """Drop-in replacement for a trained ``nn.LSTM`` / ``nn.GRU``, unrolled for up to ``steps`` time steps.

    Same parameters (names and values), same call: ``forward(input, hx=None)`` with
    input (batch, T, F) if ``batch_first`` else (T, batch, F), or unbatched (T, F);
    returns ``(output, h_n)`` for a GRU and ``(output, (h_n, c_n))`` for an LSTM,
    output (batch, T, D*H), h_n and c_n (layers*D, batch, H). Refuses, in one line,
    ``proj_size``, ``PackedSequence`` input, inter-layer dropout in training mode
    and sequences longer than ``steps``.
    """

    def __init__(self, rnn: nn.Module, steps: int) -> None:
        super().__init__()
        _refuse(rnn)
        self.cell = cell_name(rnn)
        self.input_size, self.hidden_size = rnn.input_size, rnn.hidden_size
        self.num_layers, self.bidirectional = rnn.num_layers, rnn.bidirectional
        self.batch_first, self.bias, self.dropout = rnn.batch_first, rnn.bias, rnn.dropout
        self.steps = steps
        for name, p in rnn.named_parameters():
            self.register_parameter(name, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        step_class = LSTMStep if self.cell == "lstm" else GRUStep
        # one module list of time steps per (layer, direction), in nn.LSTM's parameter order
        self.cells = nn.ModuleList(nn.ModuleList(step_class() for _ in range(steps))
                                   for _ in range(self.num_layers * self.directions))
        self.train(rnn.training)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _weights(self, layer: int, direction: int) -> tuple:
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        get = lambda name: getattr(self, name + sfx, None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def forward(self, input: torch.Tensor, hx=None):
        if isinstance(input, PackedSequence):
            raise UsageError("the explainable twin does not take a PackedSequence; pad the batch to one length "
                             "(explanations are per position, padding included)")
        if self.training and self.dropout > 0 and self.num_layers > 1:
            raise UsageError(f"the explainable twin runs in eval mode only: its {type(self).__name__} has "
                             f"dropout={self.dropout} between layers; call .eval() first")
        unbatched = input.dim() == 2
        x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
        x = x if self.batch_first else x.transpose(0, 1)  # (batch, T, F) from here on
        B, T, _ = x.shape
        if T > self.steps:
            raise UsageError(f"the explainable twin was built for at most {self.steps} steps, got {T}; "
                             f"build it with steps >= {T}")
        H, L, D = self.hidden_size, self.num_layers, self.directions
        h0, c0 = (hx if isinstance(hx, tuple) else (hx, None)) if hx is not None else (None, None)
        if unbatched:
            h0 = h0.unsqueeze(1) if h0 is not None else None
            c0 = c0.unsqueeze(1) if c0 is not None else None
        h_n, c_n, out = [], [], x
        for layer in range(L):
            seqs = []
            for d in range(D):
                k = layer * D + d
                w_ih, w_hh, b_ih, b_hh = self._weights(layer, d)
                xproj = F.linear(out, w_ih, b_ih)  # (batch, T, G*H), linear: no rule needed
                h = h0[k] if h0 is not None else x.new_zeros(B, H)
                c = (c0[k] if c0 is not None else x.new_zeros(B, H)) if self.cell == "lstm" else None
                hs = [None] * T
                for t in (range(T - 1, -1, -1) if d else range(T)):
                    step = self.cells[k][t]
                    if self.cell == "lstm":
                        h, c = step(xproj[:, t] + F.linear(h, w_hh, b_hh), c)
                    else:
                        h = step(xproj[:, t], F.linear(h, w_hh, b_hh), h)
                    hs[t] = h
                seqs.append(torch.stack(hs, dim=1))
                h_n.append(h)
                c_n.append(c)
            out = torch.cat(seqs, dim=2) if D > 1 else seqs[0]
        h_n = torch.stack(h_n)
        output = out if self.batch_first else out.transpose(0, 1)
        if unbatched:
            output, h_n = output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        if self.cell == "gru":
            return output, h_n
        c_n = torch.stack(c_n)
        return output, (h_n, c_n.squeeze(1) if unbatched else c_n)


class EmbeddingOrVectors(nn.Embedding):
    """An ``nn.Embedding`` that passes already-embedded float input (…, E) through unchanged.

    DeepLIFT needs float inputs, so explanations of a token model start at the
    embedding output; with this in place the model's own ``forward`` runs from there.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input if input.is_floating_point() else super().forward(input)


def _swap(module: nn.Module, steps: int) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, (nn.LSTM, nn.GRU)):
            setattr(module, name, ExplainableRNN(child, steps))
            count += 1
        elif type(child) is nn.Embedding:
            embedding = EmbeddingOrVectors(child.num_embeddings, child.embedding_dim, child.padding_idx,
                                           child.max_norm, child.norm_type, child.scale_grad_by_freq, child.sparse,
                                           _weight=child.weight.detach().clone())
            setattr(module, name, embedding)
        elif isinstance(child, (nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)):
            raise UsageError(f"{name} is an {type(child).__name__}, which the explainable twin does not cover; "
                             "it explains nn.LSTM and nn.GRU")
        else:
            count += _swap(child, steps)
    return count


def make_explainable(model: nn.Module, steps: int) -> nn.Module:
    """A copy of ``model`` (eval mode) that shap.DeepExplainer and Captum's DeepLiftShap explain exactly.

    Every ``nn.LSTM`` / ``nn.GRU`` submodule becomes an :class:`ExplainableRNN`
    for sequences of up to ``steps`` steps; every ``nn.Embedding`` becomes an
    :class:`EmbeddingOrVectors`, so the copy takes token ids (to predict) or their
    embeddings (to explain). The original model is not changed. The copy's
    gradients are DeepLIFT multipliers (the Shapley rule on every product), which is
    what the libraries need and not what training needs.
    """
    if isinstance(model, (nn.LSTM, nn.GRU)):
        return ExplainableRNN(model, steps).eval()
    twin = copy.deepcopy(model).eval()
    if not _swap(twin, steps):
        raise UsageError(f"{type(model).__name__} holds no nn.LSTM or nn.GRU; shap and Captum explain it as it is")
    return twin
