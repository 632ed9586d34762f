"""The Keras example's model in PyTorch: Embedding -> LSTM -> Linear -> sigmoid.

Keras' LSTM ``dropout`` and ``recurrent_dropout`` draw ONE mask per sequence
(inputs and recurrent state respectively) and reuse it at every time step.
``nn.LSTM`` has neither, so in training mode with dropout the recurrence runs
in :mod:`torch_imdb.keras_lstm` with those masks; in eval mode (or with both
rates 0) the fused ``nn.LSTM`` kernel runs. Both paths share the same parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from torch_imdb.keras_lstm import keras_dropout_lstm


@dataclass(frozen=True)
class ModelConfig:
    """Every hyperparameter needed to rebuild the network."""

    vocab_size: int = 20000
    embed_dim: int = 128
    hidden: int = 128
    dropout: float = 0.2
    recurrent_dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class SentimentLSTM(nn.Module):
    """Embedding(V, E) -> LSTM(H) -> Linear(H, 1); ``forward`` returns logits.

    Shapes: ids (batch, T) int64 -> logits (batch,). ``predict_proba`` applies
    the sigmoid, the model output the explanations refer to.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.lstm = nn.LSTM(config.embed_dim, config.hidden, batch_first=True)
        self.fc = nn.Linear(config.hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation (embedding U(-0.05, 0.05), glorot-uniform input kernel,
        orthogonal recurrent kernel, zero bias but forget gate 1, glorot-uniform dense).

        Keras has one LSTM bias; ``bias_hh`` is held at zero and frozen so that
        ``bias_ih`` plays that role and Adam sees the same parameters as Keras.
        """
        H = self.config.hidden
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
        nn.init.xavier_uniform_(self.lstm.weight_ih_l0)
        nn.init.orthogonal_(self.lstm.weight_hh_l0)
        with torch.no_grad():
            self.lstm.bias_ih_l0.zero_()
            self.lstm.bias_ih_l0[H : 2 * H] = 1.0  # gate order i, f, g, o in both libraries
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def encode(self, embedded: torch.Tensor) -> torch.Tensor:
        """Final hidden state (batch, H) of the LSTM over embedded input (batch, T, E)."""
        cfg = self.config
        if self.training and (cfg.dropout > 0 or cfg.recurrent_dropout > 0):
            lstm = self.lstm
            return keras_dropout_lstm(embedded, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0,
                                      cfg.dropout, cfg.recurrent_dropout)
        _, (h, _) = self.lstm(embedded)
        return h[-1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encode(self.embedding(ids))).squeeze(-1)

    @torch.no_grad()
    def predict_proba(self, ids: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """P(positive) for ids (N, T), computed in eval mode in batches; returns (N,)."""
        was_training = self.training
        self.eval()
        try:
            return torch.cat([torch.sigmoid(self(ids[k : k + batch_size])) for k in range(0, len(ids), batch_size)])
        finally:
            self.train(was_training)
