"""The fast engine's part of each recurrent cell: its forward trace and its multiplier backward, by spec.

The cells themselves (spec, module, gates, the twin's step) live in :mod:`torch_imdb.cells`;
:data:`PARTS` gives each of them, by name, what the engine runs (:func:`parts_of`):

- ``*_trace``: the cell's step on plain tensors for a batch of rows, keeping every
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

import functools
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch.nn import functional as F

from torch_imdb.cells import GRU, LSTM, RNN_RELU, RNN_TANH, CellSpec, steps
from torch_imdb.explain.onednn import product
from torch_imdb.explain.rules import rescale

# ---------------------------------------------------------------- shared


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

    def rows(self, index: slice) -> "CellTrace":
        """The trace of some rows (views)."""
        return CellTrace(type(self.slab)(*(t[:, index] for t in self.slab)), self.h[index])

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


# ---------------------------------------------------------------- the parts of each cell


def _tanh_derivative(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1 - y * y


def _relu_derivative(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)  # autograd's relu gradient, 0 at 0: what the twin's rule falls back to


@dataclass(frozen=True)
class CellParts:
    """The fast engine's parts of one cell: trace(x, w_ih, w_hh, b_ih, b_hh, reverse) -> CellTrace, its forward;
    block, the multiplier backward over a window (:func:`run_block`); recurrent(carry, W_hh.T) -> g_h, the
    multipliers of the previous state from a step's carry."""

    trace: Callable
    block: Callable
    recurrent: Callable


# by spec name: every cell of torch_imdb.cells.SPECS (tested)
PARTS = {
    LSTM.name: CellParts(lstm_trace, lstm_block, matmul_recurrent),
    GRU.name: CellParts(gru_trace, gru_block, gru_recurrent),
    RNN_TANH.name: CellParts(functools.partial(rnn_trace, torch.tanh, _tanh_derivative), rnn_block, matmul_recurrent),
    RNN_RELU.name: CellParts(functools.partial(rnn_trace, torch.relu, _relu_derivative), rnn_block, matmul_recurrent),
}


def parts_of(spec: CellSpec) -> CellParts:
    """The fast engine's parts of a cell."""
    return PARTS[spec.name]


