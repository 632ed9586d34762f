"""An exact DeepSHAP engine for the LSTM, with no module hooks.

It computes the values shap.DeepExplainer gives on the twin (rescale rule for
sigmoid/tanh with shap's near-zero fallback, the Shapley rule for the gate
products, linear maps exact, averaged over the background) by doing only the
work that differs between (review, background) pairs:

- the background's forward pass runs once and is cached across calls;
- each review's forward pass runs once, not B times;
- the backward pass of multipliers runs on all (review x background) pairs of
  a chunk at once, as (n, B, ...) broadcasts of per-row quantities;
- per-token attributions come straight from the input-projection difference:
  for token t, sum_e grad_x[e] (x_t - r_t)[e] = grad_z . W_ih (x_t - r_t), and
  W_ih x_t is a per-row quantity, so no (pairs, T, E) tensor is formed.

The multipliers follow shap exactly: shap multiplies the gradient of the
*reference* half by (x - r), so the near-zero fallback uses the derivative at
the reference point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from torch_imdb.errors import UsageError
from torch_imdb.explain.backends import Attribution, check_ids
from torch_imdb.explain.rules import rescale
from torch_imdb.model import SentimentRNN


def _pair_step(g_h, g_c, act_x, act_r, z_x, z_r, dgate_r, c_x, c_r, tc_x, tc_r, dtanh_c_r, cprev_x, cprev_r,
               proj_x, proj_r):
    """One time step of the multiplier backward pass, for all pairs at once.

    g_h, g_c (n, B, H): multipliers of h_t and c_t. Per-row quantities come as
    (n, 1, .) for reviews (_x) and (1, B, .) for the background (_r). Returns the
    multipliers of the gate pre-activations (n, B, 4H), of c_{t-1} (n, B, H), and
    token t's attribution (n, B).
    """
    H = g_h.shape[-1]
    i_m, f_m, g_m, o_m = ((act_x + act_r) * 0.5).split(H, dim=-1)  # Shapley: pair means
    # h_t = o * tanh(c_t): Shapley rule on the product, rescale through tanh(c_t).
    g_o = g_h * ((tc_x + tc_r) * 0.5)
    g_c = g_c + g_h * o_m * rescale(c_x - c_r, tc_x - tc_r, dtanh_c_r)
    # c_t = f * c_{t-1} + i * g: Shapley rule on both products, then rescale through the gates.
    g_gates = torch.cat([g_c * g_m, g_c * ((cprev_x + cprev_r) * 0.5), g_c * i_m, g_o], dim=-1)
    g_z = g_gates * rescale(z_x - z_r, act_x - act_r, dgate_r)
    # Token t's share: grad_z . W_ih (x_t - r_t), from the per-row projections.
    attr = (g_z * (proj_x - proj_r)).sum(-1)
    return g_z, g_c * f_m, attr


@dataclass
class Trace:
    """Forward quantities of n sequences, everything the backward pass reads.

    proj (n, T, 4H): W_ih x_t (no bias); z (T, n, 4H): gate pre-activations;
    act (T, n, 4H): sigmoid(i), sigmoid(f), tanh(g), sigmoid(o); c (T+1, n, H): cells
    from c_0 = 0; tc (T, n, H): tanh(c_t); logit (n,): output pre-sigmoid.
    """

    proj: torch.Tensor
    z: torch.Tensor
    act: torch.Tensor
    c: torch.Tensor
    tc: torch.Tensor
    logit: torch.Tensor


class FastDeepShap:
    """DeepLIFT-SHAP values of the twin for an Embedding -> LSTM -> Linear -> sigmoid model.

    ``chunk_pairs`` bounds how many (review, background) pairs are processed at
    once (memory grows linearly with it). Works on the model's device; ``dtype``
    float64 is for verification.
    """

    method = "fast"

    def __init__(self, model: SentimentRNN, dtype: torch.dtype = torch.float32, chunk_pairs: int = 2048,
                 progress: bool = False, compile: bool = False) -> None:
        cfg = model.config
        if cfg.cell != "lstm" or cfg.layers != 1 or cfg.bidirectional:
            raise UsageError(f"the fast engine covers a 1-layer LSTM; this model is a {cfg.describe()}: explain it "
                             "with the shap or captum engine (the explainable twin)")
        lstm = model.rnn
        self.model = model
        self.dtype = dtype
        self.device = model.embedding.weight.device
        cast = lambda t: t.detach().to(dtype)  # noqa: E731
        self.embedding = cast(model.embedding.weight)
        self.w_ih, self.w_hh = cast(lstm.weight_ih_l0), cast(lstm.weight_hh_l0)
        self.b_ih, self.b_hh = cast(lstm.bias_ih_l0), cast(lstm.bias_hh_l0)
        self.w_out, self.b_out = cast(model.fc.weight[0]), cast(model.fc.bias[0])
        self.H = self.w_hh.shape[1]
        self.chunk_pairs = chunk_pairs
        self.progress = progress
        # torch.compile fuses a step's ~40 elementwise passes into a few kernels (first call
        # compiles, ~30 s); shapes are kept fixed by padding the last chunk, so it compiles once.
        self.compiled = compile
        self._step = torch.compile(_pair_step, dynamic=False) if compile else _pair_step
        self._bg_key: torch.Tensor | None = None
        self._bg: Trace | None = None

    @torch.no_grad()
    def trace(self, ids: torch.Tensor) -> Trace:
        """Forward pass of ids (n, T) keeping what the multipliers need."""
        x = F.embedding(ids.to(self.device), self.embedding)
        proj = F.linear(x, self.w_ih)
        n, T, G = proj.shape
        H = self.H
        z = torch.empty(T, n, G, dtype=self.dtype, device=self.device)
        act = torch.empty_like(z)
        c = torch.zeros(T + 1, n, H, dtype=self.dtype, device=self.device)
        h = torch.zeros(n, H, dtype=self.dtype, device=self.device)
        for t in range(T):
            # summed in the twin's order ((W_ih x + b_ih) + (W_hh h + b_hh)), so float64 results match to the last bits
            zt = torch.add(proj[:, t] + self.b_ih, torch.addmm(self.b_hh, h, self.w_hh.t()), out=z[t])
            a = act[t]
            torch.sigmoid(zt, out=a)
            torch.tanh(zt[:, 2 * H : 3 * H], out=a[:, 2 * H : 3 * H])
            i, f, g, o = a.split(H, dim=1)
            torch.addcmul(f * c[t], i, g, out=c[t + 1])
            h = o * torch.tanh(c[t + 1])
        tc = torch.tanh(c[1:])
        return Trace(proj, z, act, c, tc, h @ self.w_out + self.b_out)

    def _background(self, baselines: torch.Tensor) -> Trace:
        if self._bg_key is None or self._bg_key.shape != baselines.shape or not torch.equal(self._bg_key, baselines.cpu()):
            self._bg_key, self._bg = baselines.cpu().clone(), self.trace(baselines)
        return self._bg

    def _gate_derivative(self, tr: Trace) -> torch.Tensor:
        """d act / d z at the trace's points (T, n, 4H): s(1-s) for sigmoids, 1-g^2 for tanh."""
        d = tr.act * (1 - tr.act)
        H = self.H
        d[..., 2 * H : 3 * H] = 1 - tr.act[..., 2 * H : 3 * H] ** 2
        return d

    @torch.no_grad()
    def _pairs(self, rv: Trace, bg: Trace, bg_dgate: torch.Tensor) -> torch.Tensor:
        """Per-token attributions (n, B, T) for every pair of n reviews and B backgrounds."""
        n, T, G = rv.proj.shape
        B = bg.proj.shape[0]
        X, R = (slice(None), None), (None, slice(None))  # broadcast a review / background row over pairs
        # Output sigmoid: rescale on the logit, times the output weights.
        s_x, s_r = torch.sigmoid(rv.logit), torch.sigmoid(bg.logit)
        m_out = rescale(rv.logit[X] - bg.logit[R], s_x[X] - s_r[R], (s_r * (1 - s_r))[R])
        g_h = m_out[..., None] * self.w_out  # (n, B, H)
        g_c = torch.zeros_like(g_h)
        attr = torch.empty(n, B, T, dtype=self.dtype, device=self.device)
        bg_dtanh_c = 1 - bg.tc**2
        for t in range(T - 1, -1, -1):
            g_z, g_c, attr[:, :, t] = self._step(
                g_h, g_c, rv.act[t][X], bg.act[t][R], rv.z[t][X], bg.z[t][R], bg_dgate[t][R],
                rv.c[t + 1][X], bg.c[t + 1][R], rv.tc[t][X], bg.tc[t][R], bg_dtanh_c[t][R],
                rv.c[t][X], bg.c[t][R], rv.proj[:, t][X], bg.proj[:, t][R])
            g_h = g_z @ self.w_hh
        return attr

    def iter_attribute(self, inputs: torch.Tensor, baselines: torch.Tensor) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield (start, values (n, T) float64, outputs (n,)) for consecutive chunks of reviews.

        Memory stays bounded by ``chunk_pairs`` whatever the number of reviews.
        """
        check_ids(inputs, baselines, self.model.config.vocab_size)
        bg = self._background(baselines)
        bg_dgate = self._gate_derivative(bg)
        per_chunk = max(1, self.chunk_pairs // len(baselines))
        bar = tqdm(total=len(inputs), unit="review", desc="fast DeepSHAP", disable=not self.progress)
        for start in range(0, len(inputs), per_chunk):
            ids = inputs[start : start + per_chunk]
            n = len(ids)
            if self.compiled and n < per_chunk and len(inputs) > per_chunk:
                ids = torch.cat([ids, ids[-1:].expand(per_chunk - n, -1)])  # same shape: no recompile
            rv = self.trace(ids)
            values = self._pairs(rv, bg, bg_dgate).mean(dim=1)[:n]
            bar.update(n)
            yield start, values.double().cpu().numpy(), torch.sigmoid(rv.logit[:n]).double().cpu().numpy()
        bar.close()

    def expected_value(self, baselines: torch.Tensor) -> float:
        return float(torch.sigmoid(self._background(baselines).logit).double().mean())

    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int = 0) -> Attribution:
        """Values (N, T) for token ids (N, T) against (B, T); ``target`` must be 0 (the one output)."""
        if target != 0:
            raise UsageError(f"target {target} is not an output of this model (it has 1)")
        t0 = time.perf_counter()
        parts = list(self.iter_attribute(inputs, baselines))
        values = np.concatenate([p[1] for p in parts])
        outputs = np.concatenate([p[2] for p in parts])
        seconds = time.perf_counter() - t0
        return Attribution(self.method, values, outputs, self.expected_value(baselines), seconds)
