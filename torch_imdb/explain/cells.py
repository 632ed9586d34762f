"""Each recurrent cell's equations, once, in the three forms explanation needs.

For the LSTM (gates i, f, g, o) and the GRU (gates r, z, n; PyTorch's equations):

- ``lstm_cell`` / ``gru_cell``: one time step in plain torch ops, what the explainable
  twin unrolls; the transform's rule mode gives each op its rule;
- ``lstm_trace`` / ``gru_trace``: the same step on plain tensors for a batch of
  rows, keeping every intermediate the multipliers need (the fast engine's forward);
- ``lstm_pair_step`` / ``gru_pair_step``: one step of the DeepLIFT multiplier
  backward pass for all (input, reference) pairs at once, applying exactly the
  rules the twin's modules carry: rescale for sigmoid and tanh (with shap's
  fallback to the derivative at the reference), the Shapley rule for products.

Per-row quantities enter the pair steps as (1, n, .) for inputs and (B, 1, .) for
references and broadcast to (B, n, .) (the fast engine's layout; any broadcastable one
works). "Pair mean" is (value_x + value_r) / 2.
Pre-activations are summed as the twin sums them, ``(W_ih x + b_ih) + (W_hh h + b_hh)``,
so float64 results agree to the last bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from torch_imdb.explain.rules import rescale

# ---------------------------------------------------------------- LSTM: i, f, g, o


def lstm_cell(z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step: z (batch, 4H) pre-activations in gate order i, f, g, o; c (batch, H) previous cell.

    Returns (h, c). Plain torch ops: under the transform's rule mode the sigmoids and tanhs
    get the rescale rule and the products f·c, i·g, o·tanh(c) the Shapley rule.
    """
    zi, zf, zg, zo = z.chunk(4, dim=1)
    c = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    return torch.sigmoid(zo) * torch.tanh(c), c


@dataclass
class LSTMTrace:
    """Forward quantities of one layer and direction over n rows, time-major: index t is time t
    whatever the direction (a reversed direction processes t = T-1 .. 0).

    xproj, z, act, dact (T, n, 4H): W_ih x_t + b_ih, pre-activations, sigmoid(i), sigmoid(f), tanh(g),
    sigmoid(o) and their derivatives; c, cprev (T, n, H): the cell state after step t and before it
    (0 before the direction's first step); tc, dtc (T, n, H): tanh(c) and 1 - tanh^2; h (n, T, H): outputs.
    """

    xproj: torch.Tensor
    z: torch.Tensor
    act: torch.Tensor
    dact: torch.Tensor
    c: torch.Tensor
    cprev: torch.Tensor
    tc: torch.Tensor
    dtc: torch.Tensor
    h: torch.Tensor


def steps(T: int, reverse: bool) -> range:
    """The times a direction processes, in order."""
    return range(T - 1, -1, -1) if reverse else range(T)


def time_major_projection(x: torch.Tensor, w_ih, b_ih) -> torch.Tensor:
    """W_ih x_t + b_ih for x (n, T, In), as (T, n, G): one matrix product over a contiguous (T*n, In)."""
    return F.linear(x.transpose(0, 1).contiguous(), w_ih, b_ih)


def lstm_trace(x: torch.Tensor, w_ih, w_hh, b_ih, b_hh, reverse: bool) -> LSTMTrace:
    """Run one LSTM layer/direction over x (n, T, In); ``reverse`` processes t = T-1 .. 0.

    The step's operations are those the twin runs (the same kernels, so float32 values agree
    with shap's to about 1e-7); the loop is over T small products, cheap next to the pairs' pass.
    """
    xproj = time_major_projection(x, w_ih, b_ih)  # (T, n, 4H)
    T, n, G = xproj.shape
    H = G // 4
    z, act = torch.empty_like(xproj), torch.empty_like(xproj)
    c, cprev, out = x.new_empty(T, n, H), x.new_empty(T, n, H), x.new_empty(T, n, H)
    h, c_t = x.new_zeros(n, H), x.new_zeros(n, H)
    for t in steps(T, reverse):
        cprev[t] = c_t
        zt = torch.add(xproj[t], F.linear(h, w_hh, b_hh), out=z[t])
        a = act[t]
        torch.sigmoid(zt, out=a)
        torch.tanh(zt[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])
        i, f, g, o = a.split(H, dim=1)
        c_t = torch.addcmul(f * c_t, i, g, out=c[t])
        h = out[t] = o * torch.tanh(c_t)
    dact = act * (1 - act)
    dact[..., 2 * H : 3 * H] = 1 - act[..., 2 * H : 3 * H] ** 2
    tc = torch.tanh(c)
    return LSTMTrace(xproj, z, act, dact, c, cprev, tc, 1 - tc * tc, out.transpose(0, 1))


def lstm_pair_step(g_h, g_c, act_x, act_r, z_x, z_r, dact_r, c_x, c_r, tc_x, tc_r, dtc_r, cprev_x, cprev_r):
    """Multipliers at one step: from those of h_s and c_s (B, n, H) to the gate pre-activations (B, n, 4H) and c_{s-1}."""
    H = g_h.shape[-1]
    i_m, f_m, g_m, o_m = ((act_x + act_r) * 0.5).split(H, dim=-1)  # Shapley: pair means
    m_i, m_f, m_g, m_o = rescale(z_x - z_r, act_x - act_r, dact_r).split(H, dim=-1)
    # h = o * tanh(c): Shapley rule on the product, rescale through tanh(c).
    g_o = g_h * ((tc_x + tc_r) * 0.5)
    g_c = g_c + g_h * o_m * rescale(c_x - c_r, tc_x - tc_r, dtc_r)
    # c = f * c_prev + i * g: Shapley rule on both products, then rescale through the gates. Each gate's
    # multiplier is finished before the concatenation, so torch.compile writes g_z in one pass.
    g_z = torch.cat([g_c * g_m * m_i, g_c * ((cprev_x + cprev_r) * 0.5) * m_f, g_c * i_m * m_g, g_o * m_o], dim=-1)
    return g_z, g_c * f_m


def lstm_pair_step_tokens(g_h, g_c, act_x, act_r, z_x, z_r, dact_r, c_x, c_r, tc_x, tc_r, dtc_r, cprev_x, cprev_r,
                          proj_x, proj_r):
    """:func:`lstm_pair_step` plus the token's share grad_z . W_ih (x - r), from the per-row projections (B, n)."""
    g_z, g_c = lstm_pair_step(g_h, g_c, act_x, act_r, z_x, z_r, dact_r, c_x, c_r, tc_x, tc_r, dtc_r, cprev_x, cprev_r)
    return g_z, g_c, token_share(g_z, proj_x, proj_r)


def token_share(g_proj, proj_x, proj_r):
    """A token's attribution per pair (B, n): grad of the input projection . (W_ih x_t - W_ih r_t).

    Equal to sum_e grad_x[e] (x_t - r_t)[e], without forming the (pairs, E) gradient.
    """
    return (g_proj * (proj_x - proj_r)).sum(-1)


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


@dataclass
class GRUTrace:
    """Forward quantities of one GRU layer/direction over n rows, time-major (index t is time t).

    xproj (T, n, 3H): W_ih x_t + b_ih; pre (T, n, 3H): pre-activations of r, z, n (x_n + r a_n for n);
    act, dact (T, n, 3H): sigmoid(r), sigmoid(z), tanh(n) and derivatives; a_n (T, n, H): W_hn h + b_hn;
    hprev (T, n, H): the state before step t; h (n, T, H): outputs.
    """

    xproj: torch.Tensor
    pre: torch.Tensor
    act: torch.Tensor
    dact: torch.Tensor
    a_n: torch.Tensor
    hprev: torch.Tensor
    h: torch.Tensor


def gru_trace(x: torch.Tensor, w_ih, w_hh, b_ih, b_hh, reverse: bool) -> GRUTrace:
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
    return GRUTrace(xproj, pre, act, dact, a_n, hprev, out.transpose(0, 1))


def gru_pair_step(g_h, act_x, act_r, pre_x, pre_r, dact_r, an_x, an_r, hprev_x, hprev_r):
    """Multipliers at one step: from that of h_s (B, n, H) to the input-projection multipliers (B, n, 3H),
    the recurrent-projection ones (B, n, 3H) and h_{s-1}'s direct share g_h * mean(z) (B, n, H)."""
    H = g_h.shape[-1]
    r_m, z_m, n_m = ((act_x + act_r) * 0.5).split(H, dim=-1)
    m = rescale(pre_x - pre_r, act_x - act_r, dact_r)  # rescale multipliers of r, z, n
    m_r, m_z, m_n = m.split(H, dim=-1)
    # h' = (1-z)*n + z*h: Shapley rule on both products.
    g_n = g_h * (1 - z_m)
    g_z = g_h * (((hprev_x + hprev_r) * 0.5) - n_m)
    # n = tanh(x_n + r * a_n): rescale, then Shapley on r * a_n.
    g_pre_n = g_n * m_n
    g_pre_r = g_pre_n * ((an_x + an_r) * 0.5) * m_r
    g_pre_z = g_z * m_z
    g_x = torch.cat([g_pre_r, g_pre_z, g_pre_n], dim=-1)
    g_a = torch.cat([g_pre_r, g_pre_z, g_pre_n * r_m], dim=-1)
    return g_x, g_a, g_h * z_m
