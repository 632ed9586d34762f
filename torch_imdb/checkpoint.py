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

A checkpoint may come from elsewhere, so the loader trusts nothing in it: the
files config.json names must be plain names of regular files inside the folder
(no paths, links out, FIFOs or devices), every config field is type- and
range-checked before anything is built, a model larger than its weights file
could hold is refused before it is allocated, and every failure is one line.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from torch_imdb.architectures import build_model, parameter_count
from torch_imdb.config import ARCHITECTURES, CELLS, DROPOUT_MASKS, POOLS, RANGES, ModelConfig
from torch_imdb.data import Vocab
from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_torch_save, atomic_write_json, atomic_write_text, read_json, remove_stale_temps
from torch_imdb.model import ReviewClassifier

CONFIG = "config.json"
LEGACY_WEIGHTS, LEGACY_VOCAB = "model.pt", "vocab.json"  # names used before fingerprinted files
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}")
MAX_CONFIG_BYTES = 1 << 20
# 1 GiB of float32 weights, 4 GiB with Adam's moments and the gradients: far above any model of this project, and
# within the project's machines (24 GB) for training and explaining alike
MAX_PARAMETERS = 1 << 28
CHOICES = {"cell": CELLS, "pool": POOLS, "dropout_masks": DROPOUT_MASKS, "architecture": ARCHITECTURES}


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
    model: ReviewClassifier
    vocab: Vocab
    config: dict  # the full training config (maxlen, seed, ...), as saved

    @property
    def maxlen(self) -> int:
        return int(self.config["maxlen"])

    @property
    def fingerprint(self) -> str:
        """The weights fingerprint, checked against the weights when the checkpoint was loaded."""
        return self.config["weights_fingerprint"]


def save_checkpoint(folder: str | Path, model: ReviewClassifier, vocab: Vocab, config: dict) -> str:
    """Write weights, vocabulary and config (the commit point, last); returns the weights fingerprint."""
    folder = Path(folder)
    if vocab.size != model.config.vocab_size:
        raise ValueError(f"vocabulary has {vocab.size} ids but the model embeds {model.config.vocab_size}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fingerprint = weights_fingerprint(state)
    remove_stale_temps(folder, "model-*.pt", "vocab-*.json")  # left by killed saves of other weights (names vary)
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
    """The weights fingerprint recorded in a checkpoint folder's config, or None if there is none or it is unreadable."""
    try:
        config = read_config(Path(folder))
    except UsageError:
        return None
    fingerprint = config.get("weights_fingerprint") if config else None
    return fingerprint if isinstance(fingerprint, str) and PLAIN_NAME.fullmatch(fingerprint) else None


def member(folder: Path, name, what: str) -> Path:
    """``folder/name`` when ``name`` is a plain file name and the path is a regular file inside ``folder``."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise UsageError(f"checkpoint in {folder}: {CONFIG} names {name!r} as the {what} file, which is not a plain "
                         "file name in the folder; the config is damaged or not from torch_imdb.train")
    path = folder / name
    try:
        info = os.stat(path)  # follows links: what counts is what would be read
    except OSError:
        raise UsageError(f"checkpoint folder {folder} lacks {name}; it is not a finished torch_imdb.train output "
                         "(re-run training)") from None
    if not stat.S_ISREG(info.st_mode) or path.resolve().parent != folder.resolve():
        raise UsageError(f"checkpoint in {folder}: {name} is not a regular file inside the folder (a link out, a FIFO "
                         "or a device); refusing to read it")
    return path


def read_config(folder: Path) -> dict | None:
    """``config.json`` as a dict (None when the folder has none); one-line errors for anything else."""
    path = folder / CONFIG
    if not path.exists():
        return None
    path = member(folder, CONFIG, "config")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UsageError(f"checkpoint in {folder}: {CONFIG} is {path.stat().st_size} bytes, not a training config")
    return read_json(path, "re-run training", what="a training config", where=f"checkpoint in {folder}: {CONFIG}")


def model_config_from(folder: Path, config: dict) -> ModelConfig:
    """The ModelConfig in ``config["model"]``, each field's type and range (config.RANGES) checked first (and
    ``maxlen``)."""
    fields_ = config.get("model")
    if not isinstance(fields_, dict):
        raise UsageError(f"checkpoint in {folder}: {CONFIG} has no `model` settings; re-run training")
    known = {f.name: f.type for f in fields(ModelConfig)}
    unknown = sorted(set(fields_) - set(known))
    if unknown:
        raise UsageError(f"checkpoint in {folder}: {CONFIG} has unknown model settings ({', '.join(unknown)}); it comes "
                         "from another program or a newer torch_imdb")
    checked = {**fields_, "maxlen": config.get("maxlen")}
    for name, value in checked.items():
        where = f"checkpoint in {folder}: {CONFIG} {name} = {value!r}"
        if name in CHOICES:
            why = None if value in CHOICES[name] else f"is not one of {', '.join(CHOICES[name])}"
        elif name == "bidirectional":
            why = None if isinstance(value, bool) else "is not true or false"
        else:
            why = RANGES[name].error(value)
        if why:
            raise UsageError(f"{where} {why}")
    return ModelConfig(**fields_)


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model (in eval mode) and vocabulary saved by :func:`save_checkpoint`.

    Raises :class:`UsageError` with one line when the folder is missing or
    incomplete, when a file is not what it should be (see the module docstring),
    or when the vocabulary, weights and config do not belong together.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"checkpoint folder {folder} does not exist; train first with "
                         f"`python -m torch_imdb.train --out {folder}` or pass --checkpoint")
    config = read_config(folder)
    if config is None:
        raise UsageError(f"checkpoint folder {folder} lacks {CONFIG}; it is not a finished torch_imdb.train output "
                         "(re-run training)")
    model_config = model_config_from(folder, config)
    weights_path = member(folder, config.get("weights_file", LEGACY_WEIGHTS), "weights")
    vocab_path = member(folder, config.get("vocab_file", LEGACY_VOCAB), "vocabulary")
    count = parameter_count(model_config)
    if count > MAX_PARAMETERS or 4 * count > weights_path.stat().st_size:
        raise UsageError(f"checkpoint in {folder}: {CONFIG} describes {count:,} parameters, which "
                         f"{weights_path.name} ({weights_path.stat().st_size:,} bytes) cannot hold; the files do not "
                         "belong together (re-run training)")
    if vocab_path.stat().st_size > 64 * model_config.vocab_size + MAX_CONFIG_BYTES:
        raise UsageError(f"checkpoint in {folder}: {vocab_path.name} is far larger than a vocabulary of "
                         f"{model_config.vocab_size} words; the files do not belong together (re-run training)")
    try:
        vocab = Vocab.from_json(vocab_path.read_text(encoding="utf-8"))
        state = torch.load(weights_path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise TypeError("not a state dict of tensors")
        # checkpoints from before the GRU existed named the recurrent module "lstm"
        state = {("rnn." + k[5:] if k.startswith("lstm.") else k): v for k, v in state.items()}
    except Exception as exc:  # anything a damaged or foreign file raises: JSON, zip, pickle, torch errors
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise UsageError(f"checkpoint in {folder} is unreadable ({type(exc).__name__}: {reason}); "
                         "re-run training") from None
    if vocab.size != model_config.vocab_size or config.get("vocab_fingerprint") != vocab.fingerprint():
        raise UsageError(f"checkpoint in {folder}: {vocab_path.name} has {vocab.size} ids but the model was trained "
                         f"with {model_config.vocab_size}; the vocabulary and the weights come from different runs")
    model = build_model(model_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        diff = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise UsageError(f"checkpoint in {folder}: weights do not match config.json (first mismatch: {diff[0]} "
                         f"expected {expected.get(diff[0])}, found {found.get(diff[0])}); re-run training")
    model.load_state_dict(state)
    fingerprint = model_fingerprint(model)
    if config.setdefault("weights_fingerprint", fingerprint) != fingerprint:
        raise UsageError(f"checkpoint in {folder}: {weights_path.name} is not the file config.json was written for "
                         f"(fingerprint {fingerprint}, config says {config['weights_fingerprint']}); re-run training")
    return Checkpoint(model.to(device).eval(), vocab, config)
