"""The Keras example's model in PyTorch, and its recurrent variants: Embedding -> LSTM/GRU -> Linear -> sigmoid.

Keras' recurrent ``dropout`` and ``recurrent_dropout`` draw masks once per
sequence (per gate, as Keras 2's ``implementation=1``, or one shared by the
gates) and reuse them at every time step. ``nn.LSTM`` / ``nn.GRU`` have
neither, so in training mode with dropout the recurrence runs in
:mod:`torch_imdb.keras_dropout`; in eval mode (or with both rates 0) the fused
kernel runs. Both paths share the same parameters, so the weights load into a
plain ``nn.LSTM`` / ``nn.GRU`` of the same shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from torch_imdb.keras_dropout import GATES, keras_dropout_rnn

CELLS = tuple(GATES)
DROPOUT_MASKS = ("per-gate", "shared")


@dataclass(frozen=True)
class ModelConfig:
    """Every hyperparameter needed to rebuild the network."""

    vocab_size: int = 20000
    embed_dim: int = 128
    hidden: int = 128
    dropout: float = 0.2
    recurrent_dropout: float = 0.2
    cell: str = "lstm"  # or "gru"
    layers: int = 1
    bidirectional: bool = False
    dropout_masks: str = "per-gate"  # Keras 2 implementation=1; "shared": one mask for all gates

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.dropout_masks not in DROPOUT_MASKS:
            raise ValueError(f"dropout_masks must be one of {', '.join(DROPOUT_MASKS)}, got {self.dropout_masks!r}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def describe(self) -> str:
        """A short name such as 'LSTM(128)' or '2-layer bidirectional GRU(64)'."""
        parts = ([f"{self.layers}-layer"] if self.layers > 1 else []) + (["bidirectional"] if self.bidirectional else [])
        return " ".join(parts + [f"{self.cell.upper()}({self.hidden})"])

    def to_dict(self) -> dict:
        return asdict(self)


class SentimentRNN(nn.Module):
    """Embedding(V, E) -> LSTM/GRU(H, layers, directions) -> Linear(D*H, 1); ``forward`` returns logits.

    Shapes: ids (batch, T) int64 -> logits (batch,). The head reads the final
    hidden state of the last layer: h_T of the forward direction, and for a
    bidirectional net the reverse direction's state after the first token,
    concatenated. ``predict_proba`` applies the sigmoid, the model output the
    explanations refer to.
    """

    def __init__(self, config: ModelConfig = ModelConfig()):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn_class(config.embed_dim, config.hidden, num_layers=config.layers,
                             bidirectional=config.bidirectional, batch_first=True)
        self.fc = nn.Linear(config.directions * config.hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation: embedding U(-0.05, 0.05), glorot-uniform input kernels,
        orthogonal recurrent kernels, zero biases (LSTM forget gate 1), glorot-uniform dense.

        Keras' LSTM has one bias; ``bias_hh`` is held at zero and frozen so that
        ``bias_ih`` plays that role and Adam sees the same parameters as Keras.
        Keras' GRU (``reset_after=True``, PyTorch's equations) has both biases.
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
                if self.config.cell == "lstm" and name.startswith("bias_ih"):
                    with torch.no_grad():
                        p[H : 2 * H] = 1.0  # gate order i, f, g, o in both libraries
                if self.config.cell == "lstm" and name.startswith("bias_hh"):
                    p.requires_grad_(False)
        nn.init.xavier_uniform_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def encode(self, embedded: torch.Tensor) -> torch.Tensor:
        """Final hidden state (batch, D*H) of the recurrent layers over embedded input (batch, T, E)."""
        cfg = self.config
        if self.training and (cfg.dropout > 0 or cfg.recurrent_dropout > 0):
            return keras_dropout_rnn(embedded, self.rnn, cfg.dropout, cfg.recurrent_dropout,
                                     per_gate=cfg.dropout_masks == "per-gate")[1]
        _, h = self.rnn(embedded)
        h = h[0] if isinstance(h, tuple) else h  # the LSTM returns (h_n, c_n)
        # h_n is (layers * directions, batch, H); the last layer's directions are its last D rows.
        return torch.cat(list(h[-cfg.directions :]), dim=1)

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
