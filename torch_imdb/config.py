"""Every setting of a training run, and the choices the options take: no torch here, so `--help` is instant."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch_imdb.errors import UsageError

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")  # the names of the cell specs (torch_imdb.explain.cells.SPECS)
DROPOUT_MASKS = ("per-gate", "shared")
POOLS = ("last", "mean", "max", "attention")


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 32
    max_features: int = 20000
    maxlen: int = 80
    embed_dim: int = 128
    hidden: int = 128
    dropout: float = 0.2
    recurrent_dropout: float = 0.2
    dropout_masks: str = "per-gate"  # or "shared"
    arch: str = "lstm"  # one of CELLS
    layers: int = 1
    bidirectional: bool = False
    pool: str = "last"  # or "mean", "max", "attention"
    attention_dim: int = 128
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.0
    monitor: str = "val_loss"  # or "val_acc"; only with val_fraction > 0
    patience: int = 0  # stop after this many epochs without improvement (0: never)
    device: str = "auto"
    data: str | None = None
    train_limit: int = 0  # use a seeded sample of this many training reviews (0: all)
    test_limit: int = 0  # likewise for the test split

    def model_config(self, vocab_size: int):
        """The :class:`~torch_imdb.model.ModelConfig` of this run for a vocabulary of ``vocab_size`` ids."""
        from torch_imdb.model import ModelConfig

        return ModelConfig(vocab_size=vocab_size, embed_dim=self.embed_dim, hidden=self.hidden, dropout=self.dropout,
                           recurrent_dropout=self.recurrent_dropout, cell=self.arch, layers=self.layers,
                           bidirectional=self.bidirectional, dropout_masks=self.dropout_masks,
                           pool=self.pool, attention_dim=self.attention_dim)

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "maxlen", "embed_dim", "hidden", "layers", "attention_dim"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("dropout", "recurrent_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.arch not in CELLS:
            raise UsageError(f"--arch must be one of {', '.join(CELLS)}, got {self.arch}")
        if self.pool not in POOLS:
            raise UsageError(f"--pool must be one of {', '.join(POOLS)}, got {self.pool}")
        if self.dropout_masks not in DROPOUT_MASKS:
            raise UsageError(f"--dropout-masks must be one of {', '.join(DROPOUT_MASKS)}, got {self.dropout_masks}")
        if self.monitor not in ("val_loss", "val_acc"):
            raise UsageError(f"--monitor must be val_loss or val_acc, got {self.monitor}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise UsageError(f"--lr must be a positive number, got {self.lr}")
