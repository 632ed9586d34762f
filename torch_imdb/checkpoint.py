"""Save and load a trained model: weights, vocabulary and a JSON config, crash-safe as a whole.

A checkpoint folder holds ``model-<fingerprint>.pt`` (state dict),
``vocab-<fingerprint>.json`` (words in id order) and ``config.json`` (every
hyperparameter, the seed, the data source, and which weights and vocabulary
files belong to it). The weights and vocabulary are written first under names
of their own; ``config.json`` is replaced last and is the commit point: a save
killed at any moment leaves the old config naming the old, complete files, or
the new config naming the new ones. Files no config names are removed after the
commit. Every write is flushed to disk before its rename (see :mod:`torch_imdb.io`).

The weights fingerprint (a hash of the exact tensors) ties every derived
output to the weights it came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from torch_imdb.data import Vocab
from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_torch_save, atomic_write_json, atomic_write_text
from torch_imdb.model import ModelConfig, SentimentRNN

CONFIG = "config.json"
LEGACY_WEIGHTS, LEGACY_VOCAB = "model.pt", "vocab.json"  # names used before fingerprinted files


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """16 hex digits of a SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of a model's current weights (see :func:`weights_fingerprint`)."""
    return weights_fingerprint(model.state_dict())


@dataclass
class Checkpoint:
    model: SentimentRNN
    vocab: Vocab
    config: dict  # the full training config (maxlen, seed, ...), as saved

    @property
    def maxlen(self) -> int:
        return int(self.config["maxlen"])

    @property
    def fingerprint(self) -> str:
        """The weights fingerprint, checked against the weights when the checkpoint was loaded."""
        return self.config["weights_fingerprint"]


def save_checkpoint(folder: str | Path, model: SentimentRNN, vocab: Vocab, config: dict) -> str:
    """Write weights, vocabulary and config (the commit point, last); returns the weights fingerprint."""
    folder = Path(folder)
    if vocab.size != model.config.vocab_size:
        raise ValueError(f"vocabulary has {vocab.size} ids but the model embeds {model.config.vocab_size}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fingerprint = weights_fingerprint(state)
    weights_file, vocab_file = f"model-{fingerprint}.pt", f"vocab-{vocab.fingerprint()}.json"
    atomic_torch_save(folder / weights_file, state)
    atomic_write_text(folder / vocab_file, vocab.to_json())
    atomic_write_json(folder / CONFIG, {**config, "model": model.config.to_dict(), "vocab_fingerprint": vocab.fingerprint(),
                                        "weights_fingerprint": fingerprint, "weights_file": weights_file,
                                        "vocab_file": vocab_file})
    for stale in [*folder.glob("model-*.pt"), *folder.glob("vocab-*.json"), folder / LEGACY_WEIGHTS, folder / LEGACY_VOCAB]:
        if stale.name not in (weights_file, vocab_file) and stale.exists():
            stale.unlink()
    return fingerprint


def saved_fingerprint(folder: str | Path) -> str | None:
    """The weights fingerprint recorded in a checkpoint folder's config, or None if there is none."""
    path = Path(folder) / CONFIG
    try:
        return json.loads(path.read_text()).get("weights_fingerprint") if path.exists() else None
    except ValueError:
        return None


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model (in eval mode) and vocabulary saved by :func:`save_checkpoint`.

    Raises :class:`UsageError` with one line when the folder is missing or
    incomplete, or when the vocabulary, weights and config do not belong together.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"checkpoint folder {folder} does not exist; train first with "
                         f"`python -m torch_imdb.train --out {folder}` or pass --checkpoint")
    if not (folder / CONFIG).exists():
        raise UsageError(f"checkpoint folder {folder} lacks {CONFIG}; it is not a finished torch_imdb.train output "
                         "(re-run training)")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except ValueError as exc:
        raise UsageError(f"checkpoint in {folder}: {CONFIG} is unreadable ({exc}); re-run training") from None
    weights_file, vocab_file = config.get("weights_file", LEGACY_WEIGHTS), config.get("vocab_file", LEGACY_VOCAB)
    missing = [name for name in (weights_file, vocab_file) if not (folder / name).exists()]
    if missing:
        raise UsageError(f"checkpoint folder {folder} lacks {', '.join(missing)}; it is not a finished "
                         "torch_imdb.train output (re-run training)")
    try:
        vocab = Vocab.from_json((folder / vocab_file).read_text())
        model_config = ModelConfig(**config["model"])
        state = torch.load(folder / weights_file, map_location="cpu", weights_only=True)
        # checkpoints from before the GRU existed named the recurrent module "lstm"
        state = {("rnn." + k[5:] if k.startswith("lstm.") else k): v for k, v in state.items()}
    except (ValueError, KeyError, TypeError, RuntimeError, EOFError, AttributeError) as exc:
        raise UsageError(f"checkpoint in {folder} is unreadable ({type(exc).__name__}: {exc}); re-run training") from None
    if vocab.size != model_config.vocab_size or config.get("vocab_fingerprint") != vocab.fingerprint():
        raise UsageError(f"checkpoint in {folder}: {vocab_file} has {vocab.size} ids but the model was trained with "
                         f"{model_config.vocab_size}; the vocabulary and the weights come from different runs")
    model = SentimentRNN(model_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise UsageError(f"checkpoint in {folder}: weights do not match config.json (first mismatch: {diff[0]} "
                         f"expected {expected.get(diff[0])}, found {found.get(diff[0])}); re-run training")
    model.load_state_dict(state)
    fingerprint = model_fingerprint(model)
    if config.setdefault("weights_fingerprint", fingerprint) != fingerprint:
        raise UsageError(f"checkpoint in {folder}: {weights_file} is not the file config.json was written for "
                         f"(fingerprint {fingerprint}, config says {config['weights_fingerprint']}); re-run training")
    return Checkpoint(model.to(device).eval(), vocab, config)
