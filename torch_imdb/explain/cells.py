"""Each recurrent cell once: its spec, its equations in the three forms explanation needs, and its backward block.

A :class:`CellSpec` is everything the project knows about one cell (its module type,
gate count, state, twin step, trace and multiplier block); :data:`SPECS` lists them and
:func:`spec_of` finds a module's. The model, Keras dropout, the twin and the fast engine
ask the spec and never test a cell's name. The cells: the LSTM (gates i, f, g, o), the
GRU (r, z, n; PyTorch's equations) and the Elman RNN (``nn.RNN``, tanh or relu). For each:

- ``*_cell``: one time step in plain torch ops, what the explainable twin unrolls; the
  transform's rule mode gives each op its rule;
- ``*_trace``: the same step on plain tensors for a batch of rows, keeping every
  intermediate the multipliers need (the fast engine's forward);
- ``*_pair_step``: one step of the DeepLIFT multiplier backward pass for all (input,
  reference) pairs at once, applying exactly the rules the twin's ops carry: rescale for
  sigmoid, tanh and relu (with shap's fallback to the derivative at the reference), the
  Shapley rule for products; ``*_block``: that step over a window of time steps.

Per-row quantities are named tuples (*slabs*) of time-major tensors; they enter the pair
steps as (1, n, .) for inputs and (B, 1, .) for references and broadcast to (B, n, .)
(the fast engine's layout; any broadcastable one works). "Pair mean" is (value_x + value_r) / 2.
Pre-activations are summed as the twin sums them, ``(W_ih x + b_ih) + (W_hh h + b_hh)``,
so float64 results agree to the last bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from torch_imdb.explain.onednn import product
from torch_imdb.explain.rules import rescale

# ---------------------------------------------------------------- shared


def steps(T: int, reverse: bool) -> range:
    """The times a direction processes, in order."""
    return range(T - 1, -1, -1) if reverse else range(T)


def layer_weights(rnn: nn.Module, layer: int, direction: int) -> tuple:
    """(W_ih, W_hh, b_ih, b_hh) of one layer and direction of an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
    (or a module with the same parameter names); the biases are None without ``bias``."""
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    return tuple(getattr(rnn, name + sfx, None) for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


def time_major_projection(x: torch.Tensor, w_ih, b_ih) -> torch.Tensor:
    """W_ih x_t + b_ih for x (n, T, In), as (T, n, G): one matrix product over a contiguous (T*n, In)."""
    return F.linear(x.transpose(0, 1).contiguous(), w_ih, b_ih)


def token_share(g_proj, proj_x, proj_r):
    """A token's attribution per pair (B, n): grad of the input projection . (W_ih x_t - W_ih r_t).

    Equal to sum_e grad_x[e] (x_t - r_t)[e], without forming the (pairs, E) gradient.
    """
    return (g_proj * (proj_x - proj_r)).sum(-1)


def at(slab: NamedTuple, k) -> NamedTuple:
    """The slab's tensors at index (or slice) k of their first axis."""
    return type(slab)(*(t[k] for t in slab))


def run_block(pair_step, recurrent, g_h, state, w_hh_t, rows, refs, reverse: bool, above=None, tokens: bool = False,
              keep: bool = False):
    """The multiplier backward pass of one direction over a window of K time steps, for any cell.

    Pairs are laid out backgrounds first, (B, n, .): a step's kernel then reads each
    reference's quantities once and the n inputs' (a few KB) from cache.
    g_h (B, n, H): multipliers of h after the window's last processed step (the layer above's
    share not yet added); state: the cell state's multipliers (B, n, H) or None; w_hh_t = W_hh.T;
    rows, refs: the cell's slabs for the window, (K, 1, n, .) and (K, B, 1, .), in time order;
    above: (K, B, n, H) the multipliers of this direction's outputs from above (the layer above or the
    head), or None; tokens: also return each step's token shares from the input projections.

    ``pair_step(g_h, state, x, r) -> (g_x, carry, state)`` gives the input projection's
    multipliers and what ``recurrent(carry, w_hh_t)`` turns into h_{s-1}'s. Returns the carry at the
    window's last processed step (starting the next window), the state, the token shares (K, B, n)
    or None, and with ``keep`` every input-projection multiplier (K, B, n, G*H). One call runs K
    steps, so torch.compile makes one graph of them: no Python between steps.
    """
    K = rows[0].shape[0]
    shares, kept = [None] * K, [None] * K
    carry = None
    for j, k in enumerate(range(K) if reverse else range(K - 1, -1, -1)):
        if j:
            g_h = recurrent(carry, w_hh_t)
        if above is not None:
            g_h = g_h + above[k]
        x, r = at(rows, k), at(refs, k)
        g_x, carry, state = pair_step(g_h, state, x, r)
        if tokens:
            shares[k] = token_share(g_x, x.xproj, r.xproj)
        kept[k] = g_x
    return carry, state, torch.stack(shares) if tokens else None, torch.stack(kept) if keep else None


def matmul_recurrent(g_z: torch.Tensor, w_hh_t: torch.Tensor) -> torch.Tensor:
    """Multipliers of h_{s-1} (..., H) from those of the pre-activations g_z (..., G*H); w_hh_t = W_hh.T."""
    return product(g_z, w_hh_t)


# ---------------------------------------------------------------- LSTM: i, f, g, o


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


class LSTMSlab(NamedTuple):
    """An LSTM's per-row quantities, time-major (T, n, .): index t is time t whatever the direction.

    act, dact (4H): sigmoid(i), sigmoid(f), tanh(g), sigmoid(o) and their derivatives; z: the
    pre-activations; c, cprev (H): the cell state after step t and before it (0 before the
    direction's first step); tc, dtc (H): tanh(c) and 1 - tanh^2; xproj (4H): W_ih x_t + b_ih.
    """

    act: torch.Tensor
    z: torch.Tensor
    dact: torch.Tensor
    c: torch.Tensor
    tc: torch.Tensor
    dtc: torch.Tensor
    cprev: torch.Tensor
    xproj: torch.Tensor


@dataclass
class CellTrace:
    """Forward pass of one layer and direction over n rows: the cell's slab and the outputs h (n, T, H)."""

    slab: NamedTuple
    h: torch.Tensor

    def first_rows(self, k: int) -> "CellTrace":
        """The first k rows (views)."""
        return CellTrace(type(self.slab)(*(t[:, :k] for t in self.slab)), self.h[:k])

    def final_cell(self, reverse: bool) -> torch.Tensor | None:
        """The cell state (n, H) after the direction's last step, or None for a cell without one."""
        c = getattr(self.slab, "c", None)
        return None if c is None else c[0 if reverse else -1]


def lstm_trace(x: torch.Tensor, w_ih, w_hh, b_ih, b_hh, reverse: bool) -> CellTrace:
    """Run one LSTM layer/direction over x (n, T, In); ``reverse`` processes t = T-1 .. 0.

    The step's operations are those the twin runs (the same kernels, so float32 values agree
    with shap's to about 1e-7); the loop is over T small products, cheap next to the pairs' pass.
    """
    xproj = time_major_projection(x, w_ih, b_ih)  # (T, n, 4H)
    T, n, G = xproj.shape
    H = G // 4
    z, act = torch.empty_like(xproj), torch.empty_like(xproj)
    c, tc, out = x.new_empty(T, n, H), x.new_empty(T, n, H), x.new_empty(T, n, H)
    h, c_t = x.new_zeros(n, H), x.new_zeros(n, H)
    # each step writes its results in place (no copies: the loop is a few small ops per step, each costing
    # mostly its dispatch)
    for t in steps(T, reverse):
        zt = torch.add(xproj[t], F.linear(h, w_hh, b_hh), out=z[t])
        a = act[t]
        torch.sigmoid(zt, out=a)
        torch.tanh(zt[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])
        i, f, g, o = a.split(H, dim=1)
        c_t = torch.addcmul(f * c_t, i, g, out=c[t])
        h = torch.mul(o, torch.tanh(c_t, out=tc[t]), out=out[t])
    dact = act * (1 - act)
    dact[..., 2 * H : 3 * H] = 1 - act[..., 2 * H : 3 * H] ** 2
    cprev = torch.zeros_like(c)  # the cell state before each step: the previous step's, 0 before the first
    if reverse:
        cprev[:-1] = c[1:]
    else:
        cprev[1:] = c[:-1]
    return CellTrace(LSTMSlab(act, z, dact, c, tc, 1 - tc * tc, cprev, xproj), out.transpose(0, 1))


def lstm_pair_step(g_h, g_c, x: LSTMSlab, r: LSTMSlab):
    """Multipliers at one step, from those of h_s and c_s (B, n, H): the gate pre-activations' g_z (B, n, 4H)
    (both the input projection's and, through W_hh, h_{s-1}'s carry) and c_{s-1}'s."""
    H = g_h.shape[-1]
    i_m, f_m, g_m, o_m = ((x.act + r.act) * 0.5).split(H, dim=-1)  # Shapley: pair means
    m_i, m_f, m_g, m_o = rescale(x.z - r.z, x.act - r.act, r.dact).split(H, dim=-1)
    # h = o * tanh(c): Shapley rule on the product, rescale through tanh(c).
    g_o = g_h * ((x.tc + r.tc) * 0.5)
    g_c = g_c + g_h * o_m * rescale(x.c - r.c, x.tc - r.tc, r.dtc)
    # c = f * c_prev + i * g: Shapley rule on both products, then rescale through the gates. Each gate's
    # multiplier is finished before the concatenation, so torch.compile writes g_z in one pass.
    g_z = torch.cat([g_c * g_m * m_i, g_c * ((x.cprev + r.cprev) * 0.5) * m_f, g_c * i_m * m_g, g_o * m_o], dim=-1)
    return g_z, g_z, g_c * f_m


def lstm_block(g_h, g_c, w_hh_t, rows, refs, reverse: bool, above=None, tokens: bool = False, keep: bool = False):
    """:func:`run_block` for the LSTM."""
    return run_block(lstm_pair_step, matmul_recurrent, g_h, g_c, w_hh_t, rows, refs, reverse, above, tokens, keep)


# ---------------------------------------------------------------- GRU: r, z, n


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


class GRUSlab(NamedTuple):
    """A GRU's per-row quantities, time-major (T, n, .).

    act, dact (3H): sigmoid(r), sigmoid(z), tanh(n) and derivatives; pre (3H): their
    pre-activations (x_n + r a_n for n); a_n (H): W_hn h + b_hn; hprev (H): the state before step t;
    xproj (3H): W_ih x_t + b_ih.
    """

    act: torch.Tensor
    pre: torch.Tensor
    dact: torch.Tensor
    a_n: torch.Tensor
    hprev: torch.Tensor
    xproj: torch.Tensor


def gru_trace(x: torch.Tensor, w_ih, w_hh, b_ih, b_hh, reverse: bool) -> CellTrace:
    """Run one GRU layer/direction over x (n, T, In); ``reverse`` processes t = T-1 .. 0."""
    xproj = time_major_projection(x, w_ih, b_ih)  # (T, n, 3H)
    T, n_rows, G = xproj.shape
    H = G // 3
    pre, act = torch.empty_like(xproj), torch.empty_like(xproj)
    a_n, hprev, out = x.new_empty(T, n_rows, H), x.new_empty(T, n_rows, H), x.new_empty(T, n_rows, H)
    h = x.new_zeros(n_rows, H)
    for t in steps(T, reverse):
        hprev[t] = h
        xr, xz, xn = xproj[t].chunk(3, dim=1)
        ar, az, an = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
        a_n[t] = an
        torch.add(xr, ar, out=pre[t, :, :H])
        torch.add(xz, az, out=pre[t, :, H : 2 * H])
        torch.sigmoid(pre[t, :, : 2 * H], out=act[t, :, : 2 * H])
        r, z = act[t, :, :H], act[t, :, H : 2 * H]
        torch.add(xn, r * an, out=pre[t, :, 2 * H :])
        nt = torch.tanh(pre[t, :, 2 * H :], out=act[t, :, 2 * H :])
        h = out[t] = (1 - z) * nt + z * h
    dact = act * (1 - act)
    dact[..., 2 * H :] = 1 - act[..., 2 * H :] ** 2
    return CellTrace(GRUSlab(act, pre, dact, a_n, hprev, xproj), out.transpose(0, 1))


def gru_pair_step(g_h, state: None, x: GRUSlab, r: GRUSlab):
    """Multipliers at one step, from that of h_s (B, n, H): the input projection's (B, n, 3H), and the carry
    (the recurrent projection's (B, n, 3H), h_{s-1}'s direct share g_h * mean(z) (B, n, H))."""
    H = g_h.shape[-1]
    r_m, z_m, n_m = ((x.act + r.act) * 0.5).split(H, dim=-1)
    m = rescale(x.pre - r.pre, x.act - r.act, r.dact)  # rescale multipliers of r, z, n
    m_r, m_z, m_n = m.split(H, dim=-1)
    # h' = (1-z)*n + z*h: Shapley rule on both products.
    g_n = g_h * (1 - z_m)
    g_z = g_h * (((x.hprev + r.hprev) * 0.5) - n_m)
    # n = tanh(x_n + r * a_n): rescale, then Shapley on r * a_n.
    g_pre_n = g_n * m_n
    g_pre_r = g_pre_n * ((x.a_n + r.a_n) * 0.5) * m_r
    g_pre_z = g_z * m_z
    g_x = torch.cat([g_pre_r, g_pre_z, g_pre_n], dim=-1)
    g_a = torch.cat([g_pre_r, g_pre_z, g_pre_n * r_m], dim=-1)
    return g_x, (g_a, g_h * z_m), None


def gru_recurrent(carry, w_hh_t: torch.Tensor) -> torch.Tensor:
    """Multipliers of h_{s-1} (..., H): its direct share plus the recurrent projection's g_a (..., 3H) @ W_hh."""
    g_a, direct = carry
    return direct + product(g_a, w_hh_t)


def gru_block(g_h, state, w_hh_t, rows, refs, reverse: bool, above=None, tokens: bool = False, keep: bool = False):
    """:func:`run_block` for the GRU."""
    return run_block(gru_pair_step, gru_recurrent, g_h, state, w_hh_t, rows, refs, reverse, above, tokens, keep)


# ---------------------------------------------------------------- Elman RNN: h' = act(W_ih x + b_ih + W_hh h + b_hh)


def rnn_step(act: Callable, xproj: torch.Tensor, rec: torch.Tensor, h: torch.Tensor, c: None):
    """The twin's step of ``nn.RNN``: (act(xproj + rec), None), act torch.tanh or torch.relu (the rescale rule)."""
    return act(xproj + rec), None


class RNNSlab(NamedTuple):
    """An Elman RNN's per-row quantities, time-major (T, n, .): act (H) its outputs, z (H) their
    pre-activations, dact (H) the derivative at z, xproj (H): W_ih x_t + b_ih."""

    act: torch.Tensor
    z: torch.Tensor
    dact: torch.Tensor
    xproj: torch.Tensor


def rnn_trace(act: Callable, derivative: Callable, x: torch.Tensor, w_ih, w_hh, b_ih, b_hh, reverse: bool) -> CellTrace:
    """Run one ``nn.RNN`` layer/direction over x (n, T, In) with nonlinearity ``act`` (derivative(z, act(z)))."""
    xproj = time_major_projection(x, w_ih, b_ih)  # (T, n, H)
    T, n, H = xproj.shape
    z, out = torch.empty_like(xproj), torch.empty_like(xproj)
    h = x.new_zeros(n, H)
    for t in steps(T, reverse):
        zt = torch.add(xproj[t], F.linear(h, w_hh, b_hh), out=z[t])
        h = out[t] = act(zt)
    return CellTrace(RNNSlab(out, z, derivative(z, out), xproj), out.transpose(0, 1))


def rnn_pair_step(g_h, state: None, x: RNNSlab, r: RNNSlab):
    """Multipliers at one step: g_z = g_h * rescale (B, n, H), both the input projection's and the carry."""
    g_z = g_h * rescale(x.z - r.z, x.act - r.act, r.dact)
    return g_z, g_z, None


def rnn_block(g_h, state, w_hh_t, rows, refs, reverse: bool, above=None, tokens: bool = False, keep: bool = False):
    """:func:`run_block` for the Elman RNN."""
    return run_block(rnn_pair_step, matmul_recurrent, g_h, state, w_hh_t, rows, refs, reverse, above, tokens, keep)


# ---------------------------------------------------------------- the specs


@dataclass(frozen=True)
class CellSpec:
    """One recurrent cell, everything the project needs of it.

    name: the configuration's and the command line's name; module: the torch class, with
    ``options`` (nn.RNN's nonlinearity) telling its variants apart; gates: blocks of H rows in
    W_ih and W_hh; cell_state: whether it carries c besides h (the LSTM); forget_gate: the gate
    whose bias Keras initialises to 1 (None: none); shared_bias: whether b_ih and b_hh only ever
    appear summed (Keras then trains one bias: b_hh is held at 0). step(xproj_t, rec_t, h, c) -> (h, c):
    the twin's step in plain ops; trace(x, w_ih, w_hh, b_ih, b_hh, reverse) -> CellTrace: the fast
    engine's forward; block: the multiplier backward over a window (:func:`run_block`);
    recurrent(carry, W_hh.T) -> g_h: the multipliers of the previous state from a step's carry.
    """

    name: str
    module: type
    gates: int
    cell_state: bool
    step: Callable
    trace: Callable
    block: Callable
    recurrent: Callable
    options: tuple = ()
    forget_gate: int | None = None
    shared_bias: bool = False

    def matches(self, module: nn.Module) -> bool:
        return type(module) is self.module and all(getattr(module, k) == v for k, v in self.options)

    def make(self, *args, **kwargs) -> nn.Module:
        """A new module of this cell: ``make(input_size, hidden_size, num_layers=..., ...)``."""
        return self.module(*args, **dict(self.options), **kwargs)


def _tanh_derivative(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1 - y * y


def _relu_derivative(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)  # autograd's relu gradient, 0 at 0: what the twin's rule falls back to


def _elman(name: str, act: Callable, derivative: Callable) -> CellSpec:
    return CellSpec(name, nn.RNN, 1, False, lambda *a: rnn_step(act, *a),
                    lambda *a, **k: rnn_trace(act, derivative, *a, **k), rnn_block, matmul_recurrent,
                    options=(("nonlinearity", name.split("_")[1]),), shared_bias=True)


LSTM = CellSpec("lstm", nn.LSTM, 4, True, lstm_step, lstm_trace, lstm_block, matmul_recurrent, forget_gate=1,
                shared_bias=True)
GRU = CellSpec("gru", nn.GRU, 3, False, gru_step, gru_trace, gru_block, gru_recurrent)
RNN_TANH = _elman("rnn_tanh", torch.tanh, _tanh_derivative)
RNN_RELU = _elman("rnn_relu", torch.relu, _relu_derivative)
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
