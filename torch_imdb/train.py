"""``python -m torch_imdb.train``: train the IMDB LSTM with the Keras example's defaults.

Writes the checkpoint (weights, vocabulary, config) to ``--out`` and the
per-epoch metrics to ``--out``/metrics.json (and ``--metrics-out`` if given).
A killed run continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import sys

from torch_imdb.cli import HelpFormatter, Parser, bounded
from torch_imdb.config import (ARCHITECTURES, CELLS, DROPOUT_MASKS, MONITORS, POOLS, RANGES, RENAMED_OPTIONS,
                               TrainConfig)
from torch_imdb.errors import run_cli

HELP = {
    "epochs": "passes over the training data",
    "batch_size": "reviews per optimiser step",
    "max_features": "vocabulary size: ids 0-2 reserved, the most frequent words from id 3",
    "maxlen": "tokens per review ('pre' padding and truncation: the last words are kept)",
    "embed_dim": "embedding width",
    "hidden": "recurrent units per direction",
    "dropout": "Keras input dropout of each recurrent layer (masks fixed over a sequence); for the other "
               "architectures, dropout on the embeddings",
    "recurrent_dropout": "Keras recurrent-state dropout (masks fixed over a sequence)",
    "dropout_masks": "per-gate: one mask per gate, as Keras 2's default implementation=1 (the original); "
                     "shared: one mask for all gates (Keras implementation=2)",
    "cell": "recurrent cell (also --arch): lstm, gru, rnn_tanh or rnn_relu (PyTorch's equations; the weights load "
            "into nn.LSTM / nn.GRU / nn.RNN)",
    "layers": "stacked recurrent layers",
    "bidirectional": "run each layer in both directions; the head reads both final states",
    "pool": "what the head reads: last (final state, the Keras example), mean or max over the review's tokens, "
            "or attention (additive attention over the tokens, as Jain & Wallace 2019)",
    "attention_dim": "width of the attention's scoring layer (with --pool attention, and the HAN's)",
    "architecture": "rnn: the Keras example and its recurrent variants (--cell, --layers, --bidirectional, --pool); "
                    "han: a hierarchical attention network (bidirectional GRUs with attention over 10-word chunks, "
                    "then over the chunks); cnn-lstm: Conv1d + ReLU + MaxPool into an LSTM; lstm-bigru: an LSTM into "
                    "a bidirectional GRU",
    "lr": "Adam learning rate",
    "seed": "seed for initialisation, dropout, shuffling and the validation slice",
    "val_fraction": "hold out this seeded fraction of the TRAIN split and keep the best validation epoch",
    "monitor": "what chooses the best epoch with --val-fraction: val_loss or val_acc",
    "patience": "with --val-fraction, stop after this many epochs without improvement (0: never)",
    "device": "auto (CUDA when available, else CPU), cpu, cuda, cuda:N",
    "data": "local IMDB copy in the hub layout (default: $TORCH_IMDB_DATA, else the stanfordnlp/imdb hub)",
    "train_limit": "train on a seeded sample of this many reviews (0: all 25,000)",
    "test_limit": "evaluate on a seeded sample of this many test reviews (0: all 25,000)",
}


CHOICES = {"cell": CELLS, "pool": POOLS, "dropout_masks": DROPOUT_MASKS, "monitor": MONITORS,
           "architecture": ARCHITECTURES}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m torch_imdb.train", description=__doc__,
               formatter_class=HelpFormatter)
    for name, default in TrainConfig().options().items():
        older = [old for old, new in RENAMED_OPTIONS.items() if new == name]
        flags = [f"--{n.replace('_', '-')}" for n in (name, *older)]
        if isinstance(default, bool):
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default, help=HELP[name])
        elif name in RANGES:
            p.add_argument(*flags, type=bounded(RANGES[name]), default=default, help=HELP[name])
        else:
            p.add_argument(*flags, choices=CHOICES.get(name), default=default, help=HELP[name])
    p.add_argument("--out", default="artifacts", help="checkpoint folder (weights, vocab.json, config.json)")
    p.add_argument("--metrics-out", default=None, help="also write the metrics JSON here (e.g. results/train_metrics.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue the killed run in --out from its last finished epoch (OUT/train_state.pt, saved "
                        "every epoch); give the same options. Ends with the same weights as an uninterrupted run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from torch_imdb.training import fit  # torch loads here, not for --help

    cfg = TrainConfig.of(**{name: getattr(args, name) for name in TrainConfig().options()})
    fit(cfg, args.out, resume=args.resume, metrics_out=args.metrics_out,
        command="python -m torch_imdb.train " + " ".join(sys.argv[1:] if argv is None else argv))
    if args.metrics_out:
        print(f"metrics written to {args.metrics_out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
