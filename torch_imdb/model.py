"""The Keras example's model in PyTorch, and its recurrent variants: Embedding -> LSTM/GRU -> pooling -> Linear -> sigmoid.

The head reads the recurrent outputs through one of ``POOLS``: the final state
(the Keras example), the mean or the maximum over the review's tokens, or
additive attention (Bahdanau et al. 2015, the classifier of Jain & Wallace 2019):
``score_t = v . tanh(W h_t + b)``, ``alpha = softmax(score)`` over the review's
tokens, ``context = sum_t alpha_t h_t``. Pooling ignores padding (id 0).

Keras' recurrent ``dropout`` and ``recurrent_dropout`` draw masks once per
sequence (per gate, as Keras 2's ``implementation=1``, or one shared by the
gates) and reuse them at every time step. ``nn.LSTM`` / ``nn.GRU`` have
neither, so in training mode with dropout the recurrence runs in
:mod:`torch_imdb.keras_dropout`; in eval mode (or with both rates 0) the fused
kernel runs. Both paths share the same parameters, so the weights load into a
plain ``nn.LSTM`` / ``nn.GRU`` of the same shape.
"""

from __future__ import annotations

import torch
from torch import nn

from torch_imdb.config import ModelConfig  # noqa: F401 - where users have imported it from
from torch_imdb.data import PAD_ID
from torch_imdb.cells import spec_named
from torch_imdb.keras_dropout import keras_dropout_rnn


def token_mask(ids: torch.Tensor) -> torch.Tensor:
    """The review's tokens (batch, T) bool: ids != padding. A row of padding alone (no review left, as when a
    faithfulness metric deletes every token) is read whole, so pooling over it stays finite."""
    tokens = ids != PAD_ID
    return tokens | ~tokens.any(dim=1, keepdim=True)


class ReviewClassifier(nn.Module):
    """What every model of reviews here is: token ids (batch, T) int64 -> logits (batch,) of the review being
    positive, built from a :class:`ModelConfig` (``config``). The explainers explain such a model's
    P(positive), the sigmoid of its logit (:meth:`predict_proba`)."""

    config: ModelConfig

    @torch.no_grad()
    def predict_proba(self, ids: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """P(positive) for ids (N, T), computed in eval mode in batches; returns (N,)."""
        was_training = self.training
        self.eval()
        try:
            return torch.cat([torch.sigmoid(self(ids[k : k + batch_size])) for k in range(0, len(ids), batch_size)])
        finally:
            self.train(was_training)


def additive_attention(score: nn.Linear, v: nn.Linear, h: torch.Tensor,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
    """Additive attention's weights (batch, T) over h (batch, T, D): softmax_t of v . tanh(score(h_t)), 0 where
    ``keep`` (batch, T) bool is False (None: everywhere kept). The attention pool's and the HAN's."""
    scores = v(torch.tanh(score(h))).squeeze(-1)
    return torch.softmax(scores if keep is None else scores.masked_fill(~keep, float("-inf")), dim=1)


class SentimentRNN(ReviewClassifier):
    """Embedding(V, E) -> LSTM/GRU(H, layers, directions) -> pooling -> Linear(D*H, 1); ``forward`` returns logits.

    Shapes: ids (batch, T) int64 -> logits (batch,). With ``pool="last"`` the head
    reads the final hidden state of the last layer: h_T of the forward direction,
    and for a bidirectional net the reverse direction's state after the first
    token, concatenated. The other pools read the last layer's outputs (batch, T, D*H)
    at the review's tokens (ids != 0). ``predict_proba`` applies the sigmoid, the
    model output the explanations refer to.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.spec = spec_named(config.cell)
        self.rnn = self.spec.make(config.embed_dim, config.hidden, num_layers=config.layers,
                                  bidirectional=config.bidirectional, batch_first=True)
        width = config.directions * config.hidden
        if config.pool == "attention":
            self.attn = nn.Linear(width, config.attention_dim)
            self.attn_v = nn.Linear(config.attention_dim, 1, bias=False)
        self.fc = nn.Linear(width, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation: embedding U(-0.05, 0.05), glorot-uniform input kernels,
        orthogonal recurrent kernels, zero biases (LSTM forget gate 1), glorot-uniform dense.

        Keras' LSTM and SimpleRNN have one bias; ``bias_hh`` is held at zero and frozen so
        that ``bias_ih`` plays that role and Adam sees the same parameters as Keras (the
        spec's ``shared_bias``). Keras' GRU (``reset_after=True``, PyTorch's equations) has both biases.
        """
        H = self.config.hidden
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p)
            else:
                nn.init.zeros_(p)
                gate = self.spec.forget_gate
                if gate is not None and name.startswith("bias_ih"):
                    with torch.no_grad():
                        p[gate * H : (gate + 1) * H] = 1.0  # the LSTM's f (gate order i, f, g, o in both libraries)
                if self.spec.shared_bias and name.startswith("bias_hh"):
                    p.requires_grad_(False)
        for layer in (self.fc, getattr(self, "attn", None), getattr(self, "attn_v", None)):
            if layer is not None:
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)

    def encode(self, embedded: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The pooled representation (batch, D*H) of embedded input (batch, T, E).

        tokens (batch, T) bool marks the review's tokens (not padding); pools other
        than "last" need it.
        """
        cfg = self.config
        if self.training and (cfg.dropout > 0 or cfg.recurrent_dropout > 0):
            out, final = keras_dropout_rnn(embedded, self.rnn, cfg.dropout, cfg.recurrent_dropout,
                                           per_gate=cfg.dropout_masks == "per-gate")
        else:
            out, h = self.rnn(embedded)
            h = h[0] if isinstance(h, tuple) else h  # the LSTM returns (h_n, c_n)
            # h_n is (layers * directions, batch, H); the last layer's directions are its last D rows,
            # concatenated per example as torch.cat([h_n[-2], h_n[-1]], 1) would.
            final = h[-cfg.directions :].transpose(0, 1).reshape(h.shape[1], -1)
        if cfg.pool == "last":
            return final
        keep = tokens.unsqueeze(-1)  # (batch, T, 1)
        if cfg.pool == "mean":
            return (out * keep).sum(dim=1) / keep.sum(dim=1)
        if cfg.pool == "max":
            return out.masked_fill(~keep, float("-inf")).amax(dim=1)
        return (self.attention(out, tokens).unsqueeze(-1) * out).sum(dim=1)

    def attention(self, out: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Attention weights (batch, T) over the outputs (batch, T, D*H); 0 at padding, each row sums to 1."""
        return additive_attention(self.attn, self.attn_v, out, tokens)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = token_mask(ids) if self.config.pool != "last" else None  # the final state needs no mask
        return self.fc(self.encode(self.embedding(ids), tokens)).squeeze(-1)

    @torch.no_grad()
    def attention_weights(self, ids: torch.Tensor) -> torch.Tensor:
        """The attention weights (N, T) of ids (N, T), in eval mode (pool="attention" only)."""
        if self.config.pool != "attention":
            raise ValueError(f"this model pools with {self.config.pool!r}, not attention")
        was_training = self.training
        self.eval()
        try:
            out, _ = self.rnn(self.embedding(ids))
            return self.attention(out, token_mask(ids))
        finally:
            self.train(was_training)
