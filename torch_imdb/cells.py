"""Each recurrent cell once, as the model knows it: its module, gate count, state and the twin's step in plain ops.

A :class:`CellSpec` is what the model, Keras dropout and the explainable twin know of one
cell; :data:`SPECS` lists them and :func:`spec_of` finds a module's. They ask the spec and never
test a cell's name. The cells: the LSTM (gates i, f, g, o), the GRU (r, z, n; PyTorch's
equations) and the Elman RNN (``nn.RNN``, tanh or relu). ``*_cell`` is one time step in plain
torch ops, what the explainable twin unrolls (the transform's rule mode gives each op its
rule). The fast engine's parts of each cell (its trace and multiplier backward) live in
:mod:`torch_imdb.explain.cells`, keyed by the spec's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# ---------------------------------------------------------------- shared


def steps(T: int, reverse: bool) -> range:
    """The times a direction processes, in order."""
    return range(T - 1, -1, -1) if reverse else range(T)


def layer_weights(rnn: nn.Module, layer: int, direction: int) -> tuple:
    """(W_ih, W_hh, b_ih, b_hh) of one layer and direction of an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
    (or a module with the same parameter names); the biases are None without ``bias``."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    return tuple(getattr(rnn, name + sfx, None) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


# ---------------------------------------------------------------- the cells' steps


def lstm_cell(z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step: z (batch, 4H) pre-activations in gate order i, f, g, o; c (batch, H) previous cell.

    Returns (h, c). Plain torch ops: under the transform's rule mode the sigmoids and tanhs
    get the rescale rule and the products f·c, i·g, o·tanh(c) the Shapley rule.
    """
    zi, zf, zg, zo = z.chunk(4, dim=1)
    c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    return torch.sigmoid(zo) * torch.tanh(c), c


def lstm_step(xproj: torch.Tensor, rec: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """The twin's step: xproj = W_ih x_t + b_ih, rec = W_hh h + b_hh (batch, 4H) -> (h, c)."""
    return lstm_cell(xproj + rec, c)


def gru_cell(x: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU step (PyTorch's equations): x, a (batch, 3H) input and recurrent projections in gate
    order r, z, n; h (batch, H). r = σ(x_r + a_r), z = σ(x_z + a_z), n = tanh(x_n + r·a_n),
    h' = (1-z)·n + z·h, where x_* = W_i* x + b_i* and a_* = W_h* h + b_h*.
    """
    xr, xz, xn = x.chunk(3, dim=1)
    ar, az, an = a.chunk(3, dim=1)
    r, z = torch.sigmoid(xr + ar), torch.sigmoid(xz + az)
    n = torch.tanh(xn + r * an)
    return (1 - z) * n + z * h


def gru_step(xproj: torch.Tensor, rec: torch.Tensor, h: torch.Tensor, c: None):
    """The twin's step: (h, None); the GRU has no cell state."""
    return gru_cell(xproj, rec, h), None


def rnn_step(act: Callable, xproj: torch.Tensor, rec: torch.Tensor, h: torch.Tensor, c: None):
    """The twin's step of ``nn.RNN``: (act(xproj + rec), None), act torch.tanh or torch.relu (the rescale rule)."""
    return act(xproj + rec), None


# ---------------------------------------------------------------- the specs


@dataclass(frozen=True)
class CellSpec:
    """One recurrent cell, as the model knows it.

    name: the configuration's and the command line's name; module: the torch class, with
    ``options`` (nn.RNN's nonlinearity) telling its variants apart; gates: blocks of H rows in
    W_ih and W_hh; cell_state: whether it carries c besides h (the LSTM); forget_gate: the gate
    whose bias Keras initialises to 1 (None: none); shared_bias: whether b_ih and b_hh only ever
    appear summed (Keras then trains one bias: b_hh is held at 0). step(xproj_t, rec_t, h, c) -> (h, c):
    the twin's step in plain ops.
    """

    name: str
    module: type
    gates: int
    cell_state: bool
    step: Callable
    options: tuple = ()
    forget_gate: int | None = None
    shared_bias: bool = False

    def matches(self, module: nn.Module) -> bool:
        return type(module) is self.module and all(getattr(module, k) == v for k, v in self.options)

    def make(self, *args, **kwargs) -> nn.Module:
        """A new module of this cell: ``make(input_size, hidden_size, num_layers=..., ...)``."""
        return self.module(*args, **dict(self.options), **kwargs)


def _elman(name: str, act: Callable) -> CellSpec:
    return CellSpec(name, nn.RNN, 1, False, lambda *a: rnn_step(act, *a),
                    options=(("nonlinearity", name.split("_")[1]),), shared_bias=True)


LSTM = CellSpec("lstm", nn.LSTM, 4, True, lstm_step, forget_gate=1, shared_bias=True)
GRU = CellSpec("gru", nn.GRU, 3, False, gru_step)
RNN_TANH = _elman("rnn_tanh", torch.tanh)
RNN_RELU = _elman("rnn_relu", torch.relu)
SPECS = (LSTM, GRU, RNN_TANH, RNN_RELU)
RECURRENT_MODULES = tuple({s.module for s in SPECS})


def spec_of(module: nn.Module) -> CellSpec:
    """The spec of a recurrent module (nn.LSTM, nn.GRU, nn.RNN with tanh or relu), or a TypeError."""
    for spec in SPECS:
        if spec.matches(module):
            return spec
    raise TypeError(f"no cell spec for {type(module).__name__}; the cells: {', '.join(s.name for s in SPECS)}")


def spec_named(name: str) -> CellSpec:
    """The spec called ``name`` (a configuration's ``cell``)."""
    for spec in SPECS:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown cell {name!r}; the cells: {', '.join(s.name for s in SPECS)}")
