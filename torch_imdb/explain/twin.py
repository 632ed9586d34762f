"""The explainable twin: the trained LSTM unrolled over time, built for DeepLIFT hooks.

It holds the trained weights and computes the same function from embedded
reviews (batch, T, E) to P(positive) (batch, 1), with three properties that
let shap.DeepExplainer and Captum's DeepLiftShap explain it exactly:

1. every sigmoid and tanh is its own ``nn.Sigmoid``/``nn.Tanh`` instance per
   time step: both libraries store a module's last input/output in a forward
   hook, so a module called T times would keep only the last call;
2. each gate product (f·c, i·g, o·tanh(c)) is a :class:`Product`, which uses
   the Shapley rule while attributions are computed;
3. every activation's input is a tensor used nowhere else (``tanh(c.clone())``):
   Captum hooks the module's input *tensor*, so if c also fed the next step's
   forget product its hook would replace the whole gradient of c.

Linear maps use functional calls on the twin's own parameters (no module is
called twice) and need no rule: DeepLIFT on a linear map is its gradient.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from torch_imdb.explain.rules import Product
from torch_imdb.model import SentimentLSTM


class LSTMStep(nn.Module):
    """One time step's nonlinear pieces: 3 sigmoids, 2 tanhs, 3 products."""

    def __init__(self) -> None:
        super().__init__()
        self.sig_i, self.sig_f, self.sig_o = nn.Sigmoid(), nn.Sigmoid(), nn.Sigmoid()
        self.tanh_g, self.tanh_c = nn.Tanh(), nn.Tanh()
        self.fc_prod, self.ig_prod, self.oc_prod = Product(), Product(), Product()

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (batch, 4H) pre-activations in gate order i, f, g, o; c (batch, H) previous cell."""
        zi, zf, zg, zo = z.chunk(4, dim=1)  # each chunk is a distinct view, used once
        c = self.fc_prod(self.sig_f(zf), c) + self.ig_prod(self.sig_i(zi), self.tanh_g(zg))
        h = self.oc_prod(self.sig_o(zo), self.tanh_c(c.clone()))
        return h, c


class LSTMTwin(nn.Module):
    """Embedded review (batch, T, E) -> P(positive) (batch, 1), unrolled for T steps.

    Build it with :meth:`from_model`; ``embed`` maps token ids to the input it takes.
    """

    def __init__(self, embedding: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, bias: torch.Tensor,
                 w_out: torch.Tensor, b_out: torch.Tensor, steps: int) -> None:
        super().__init__()
        self.register_buffer("embedding", embedding.detach().clone())
        self.w_ih = nn.Parameter(w_ih.detach().clone(), requires_grad=False)
        self.w_hh = nn.Parameter(w_hh.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.w_out = nn.Parameter(w_out.detach().clone(), requires_grad=False)
        self.b_out = nn.Parameter(b_out.detach().clone(), requires_grad=False)
        self.steps = nn.ModuleList(LSTMStep() for _ in range(steps))
        self.out_sigmoid = nn.Sigmoid()

    @classmethod
    def from_model(cls, model: SentimentLSTM, steps: int) -> "LSTMTwin":
        """Twin of a trained :class:`SentimentLSTM` for sequences of ``steps`` tokens (same device and dtype)."""
        lstm = model.lstm
        return cls(model.embedding.weight, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0,
                   model.fc.weight, model.fc.bias, steps)

    @property
    def hidden(self) -> int:
        return self.w_hh.shape[1]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (batch, T) -> embedded input (batch, T, E) in the twin's dtype."""
        return F.embedding(ids.to(self.embedding.device), self.embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.steps):
            raise ValueError(f"twin was built for {len(self.steps)} steps, got sequences of {x.shape[1]}")
        xproj = F.linear(x, self.w_ih, self.bias)  # (batch, T, 4H)
        h = x.new_zeros(x.shape[0], self.hidden)
        c = torch.zeros_like(h)
        for t, step in enumerate(self.steps):
            h, c = step(xproj[:, t] + F.linear(h, self.w_hh), c)
        return self.out_sigmoid(F.linear(h, self.w_out, self.b_out))

    @contextmanager
    def shapley_products(self) -> Iterator["LSTMTwin"]:
        """Within this block every :class:`Product` applies the Shapley rule in backward."""
        products = [m for m in self.modules() if isinstance(m, Product)]
        for m in products:
            m.shapley = True
        try:
            yield self
        finally:
            for m in products:
                m.shapley = False
