"""Save and load a trained model: weights, vocabulary and a JSON config, written atomically.

A checkpoint folder holds ``model.pt`` (state dict), ``vocab.json`` (words in
id order) and ``config.json`` (every hyperparameter, the seed and the data
source), enough for a later command to rebuild the exact model and encode text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from torch_imdb.data import Vocab
from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_torch_save, atomic_write_json, atomic_write_text
from torch_imdb.model import ModelConfig, SentimentRNN

WEIGHTS, VOCAB, CONFIG = "model.pt", "vocab.json", "config.json"


@dataclass
class Checkpoint:
    model: SentimentRNN
    vocab: Vocab
    config: dict  # the full training config (maxlen, seed, ...), as saved

    @property
    def maxlen(self) -> int:
        return int(self.config["maxlen"])


def save_checkpoint(folder: str | Path, model: SentimentRNN, vocab: Vocab, config: dict) -> None:
    """Write weights, vocabulary and config; each file atomically, config last (it marks completion)."""
    folder = Path(folder)
    if vocab.size != model.config.vocab_size:
        raise ValueError(f"vocabulary has {vocab.size} ids but the model embeds {model.config.vocab_size}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(folder / WEIGHTS, state)
    atomic_write_text(folder / VOCAB, vocab.to_json())
    atomic_write_json(folder / CONFIG, {**config, "model": model.config.to_dict(), "vocab_fingerprint": vocab.fingerprint()})


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model (in eval mode) and vocabulary saved by :func:`save_checkpoint`.

    Raises :class:`UsageError` with one line when the folder is missing or
    incomplete, or when the vocabulary and weights do not belong together.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"checkpoint folder {folder} does not exist; train first with "
                         f"`python -m torch_imdb.train --out {folder}` or pass --checkpoint")
    missing = [name for name in (WEIGHTS, VOCAB, CONFIG) if not (folder / name).exists()]
    if missing:
        raise UsageError(f"checkpoint folder {folder} lacks {', '.join(missing)}; it is not a finished "
                         "torch_imdb.train output (re-run training)")
    try:
        config = json.loads((folder / CONFIG).read_text())
        vocab = Vocab.from_json((folder / VOCAB).read_text())
        model_config = ModelConfig(**config["model"])
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        # checkpoints from before the GRU existed named the recurrent module "lstm"
        state = {("rnn." + k[5:] if k.startswith("lstm.") else k): v for k, v in state.items()}
    except (ValueError, KeyError, TypeError, RuntimeError, EOFError, AttributeError) as exc:
        raise UsageError(f"checkpoint in {folder} is unreadable ({type(exc).__name__}: {exc}); re-run training") from None
    if vocab.size != model_config.vocab_size or config.get("vocab_fingerprint") != vocab.fingerprint():
        raise UsageError(f"checkpoint in {folder}: vocab.json has {vocab.size} ids but the model was trained with "
                         f"{model_config.vocab_size}; vocab.json and model.pt come from different runs")
    model = SentimentRNN(model_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise UsageError(f"checkpoint in {folder}: weights do not match config.json (first mismatch: {diff[0]} "
                         f"expected {expected.get(diff[0])}, found {found.get(diff[0])}); re-run training")
    model.load_state_dict(state)
    return Checkpoint(model.to(device).eval(), vocab, config)
