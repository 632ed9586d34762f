"""Every setting of a model and a training run, and the choices the options take: no torch here, so `--help` is
instant."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import NamedTuple

from torch_imdb.errors import UsageError

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")  # the names of the cell specs (torch_imdb.cells.SPECS)
DROPOUT_MASKS = ("per-gate", "shared")
POOLS = ("last", "mean", "max", "attention")
# the models (torch_imdb.architectures.MODELS): the Keras example's shape and its recurrent variants, a hierarchical
# attention network, a CNN-LSTM, an LSTM into a bidirectional GRU
ARCHITECTURES = ("rnn", "han", "cnn-lstm", "lstm-bigru")
HAN_CHUNK = 10  # words per chunk of the HAN's word-level GRU
CONV_KERNEL, CONV_POOL = 5, 2  # the CNN-LSTM's Conv1d kernel and max-pooling window
MONITORS = ("val_loss", "val_acc")
MAX_REVIEWS = 25_000  # each IMDB split's size
MAX_LEN = 4096  # above the longest IMDB review (2,470 words); 25,000 reviews of it are 0.8 GB of int64 ids


class Range(NamedTuple):
    """The values a numeric setting takes: a finite ``kind`` (int or float) from ``low`` to ``high``, each end
    included unless ``low_open`` / ``high_open``."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"

    def error(self, value) -> str | None:
        """Why ``value`` is not in the range (a phrase), or None when it is."""
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) \
                or not (self.low < value if self.low_open else self.low <= value) \
                or not (value < self.high if self.high_open else value <= self.high):
            return f"is not {'an integer' if self.kind is int else 'a number'} in {self}"
        return None


# Every numeric setting of a model or a training run, bounded before anything is built: the train command's option
# types, TrainConfig.validate and the checkpoint loader all read this one table. The highs fit the project's machines
# (24 GB); a model's size is bounded once more by its parameter count (torch_imdb.checkpoint.MAX_PARAMETERS).
RANGES: dict[str, Range] = {
    "epochs": Range(int, 1, 10_000), "batch_size": Range(int, 1, MAX_REVIEWS),
    "max_features": Range(int, 4, 10_000_000), "vocab_size": Range(int, 3, 10_000_000),
    "maxlen": Range(int, 1, MAX_LEN),
    "embed_dim": Range(int, 1, 1 << 14), "hidden": Range(int, 1, 1 << 14), "layers": Range(int, 1, 64),
    "attention_dim": Range(int, 1, 1 << 14), "dropout": Range(float, 0, 1, high_open=True),
    "recurrent_dropout": Range(float, 0, 1, high_open=True), "val_fraction": Range(float, 0, 1, high_open=True),
    "lr": Range(float, 0, 10, low_open=True), "seed": Range(int, 0, 2**32 - 1), "patience": Range(int, 0, 10_000),
    "train_limit": Range(int, 0, MAX_REVIEWS), "test_limit": Range(int, 0, MAX_REVIEWS),
}


@dataclass(frozen=True)
class ModelConfig:
    """Every hyperparameter needed to rebuild the network."""

    vocab_size: int = 20000
    embed_dim: int = 128
    hidden: int = 128
    dropout: float = 0.2
    recurrent_dropout: float = 0.2
    cell: str = "lstm"  # one of CELLS: "lstm", "gru", "rnn_tanh", "rnn_relu"
    layers: int = 1
    bidirectional: bool = False
    dropout_masks: str = "per-gate"  # Keras 2 implementation=1; "shared": one mask for all gates
    pool: str = "last"  # what the head reads: the final state, or mean / max / attention over the outputs
    attention_dim: int = 128  # width of the additive attention's scoring layer (pool="attention", and the HAN's)
    architecture: str = "rnn"  # one of ARCHITECTURES; cell, layers, bidirectional, pool, recurrent dropout: "rnn" only

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.dropout_masks not in DROPOUT_MASKS:
            raise ValueError(f"dropout_masks must be one of {', '.join(DROPOUT_MASKS)}, got {self.dropout_masks!r}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def describe(self) -> str:
        """A short name such as 'LSTM(128)' or '2-layer bidirectional GRU(64)'."""
        H = self.hidden
        if self.architecture == "han":
            return (f"HAN: bidirectional GRU({H}) + attention over {HAN_CHUNK}-word chunks, bidirectional GRU({H}) + "
                    "attention")
        if self.architecture == "cnn-lstm":
            return f"CNN-LSTM: Conv1d({H}, {CONV_KERNEL}) + ReLU + MaxPool({CONV_POOL}) -> LSTM({H})"
        if self.architecture == "lstm-bigru":
            return f"LSTM({H}) -> bidirectional GRU({H})"
        parts = ([f"{self.layers}-layer"] if self.layers > 1 else []) + (["bidirectional"] if self.bidirectional else [])
        name = " ".join(parts + [f"{self.cell.upper()}({self.hidden})"])
        return name if self.pool == "last" else f"{name} + {self.pool} pooling"

    def to_dict(self) -> dict:
        return asdict(self)


# The command line's names of ModelConfig's settings where they differ: the vocabulary's cap (Keras's max_features;
# the data may give fewer ids, and the model is built with the vocabulary's size).
OPTION_NAMES = {"vocab_size": "max_features"}
# Options' older names, still taken on the command line and in saved training states: older name -> name.
RENAMED_OPTIONS = {"arch": "cell"}


def check_options(options: dict) -> None:
    """Every setting of a training run by its option name: its type and range (RANGES) and choice, checked before
    anything is built; one-line errors naming the option."""
    for name in RANGES.keys() & options.keys():
        why = RANGES[name].error(options[name])
        if why:
            raise UsageError(f"--{name.replace('_', '-')} {options[name]!r} {why}")
    for name, choices in (("cell", CELLS), ("pool", POOLS), ("architecture", ARCHITECTURES),
                          ("dropout_masks", DROPOUT_MASKS), ("monitor", MONITORS)):
        if name in options and options[name] not in choices:
            raise UsageError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {options[name]}")
    rnn_only = [name for name in ("cell", "layers", "bidirectional", "pool")
                if options.get(name, getattr(ModelConfig, name)) != getattr(ModelConfig, name)]
    if options.get("architecture", ModelConfig.architecture) != "rnn" and rnn_only:
        raise UsageError(f"--architecture {options['architecture']} has its own recurrent layers; "
                         f"--{', --'.join(rnn_only)} apply to --architecture rnn only")


@dataclass
class TrainConfig:
    """A training run's settings: the model it builds and the run's own.

    ``model``'s ``vocab_size`` caps the vocabulary (``--max-features``): the data may give fewer ids, and
    :meth:`model_config` builds the model with the vocabulary's size. :meth:`of` takes the command line's options
    by name (the model's among them) and :meth:`options` gives them back, flat, as checkpoints record them.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 15
    batch_size: int = 32
    maxlen: int = 80
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.0
    monitor: str = "val_loss"  # or "val_acc"; only with val_fraction > 0
    patience: int = 0  # stop after this many epochs without improvement (0: never)
    device: str = "auto"
    data: str | None = None
    train_limit: int = 0  # use a seeded sample of this many training reviews (0: all)
    test_limit: int = 0  # likewise for the test split

    @classmethod
    def of(cls, **options) -> TrainConfig:
        """The run of these options (``TrainConfig.of(hidden=64, cell="gru", epochs=3)``), checked first
        (:func:`check_options`); the ones not given take their defaults."""
        check_options(options)
        names = {OPTION_NAMES.get(f.name, f.name): f.name for f in fields(ModelConfig)}
        model = {names[k]: v for k, v in options.items() if k in names}
        return cls(model=ModelConfig(**model), **{k: v for k, v in options.items() if k not in names})

    def options(self) -> dict:
        """Every setting by its option name, flat: what :meth:`of` takes and a checkpoint records."""
        run = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {**{OPTION_NAMES.get(k, k): v for k, v in self.model.to_dict().items()}, **run}

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The :class:`ModelConfig` of this run for a vocabulary of ``vocab_size`` ids."""
        return replace(self.model, vocab_size=vocab_size)

    def validate(self) -> None:
        """Every setting's type, range and choice (:func:`check_options`); one-line errors naming the option."""
        check_options(self.options())
