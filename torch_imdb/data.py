"""IMDB loading, Keras-style text encoding, and seeded sampling.

Conventions follow ``keras.datasets.imdb`` as used by the original example:
id 0 = padding, 1 = start-of-review marker, 2 = out-of-vocabulary, and words
ranked by training-split frequency from id 3; only ids < ``max_features`` are
kept. Sequences are padded and truncated 'pre': short reviews are left-padded
with zeros, long ones keep their *last* ``maxlen`` tokens.

The tokenizer is plain Python (``str.translate`` + ``split``), the same cleaning
as Keras' ``text_to_word_sequence``: no extra dependency, and measured faster
than the ``tokenizers`` WordLevel model for this job (see README).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_save_npy

PAD_ID, START_ID, OOV_ID = 0, 1, 2
N_RESERVED = 3
PAD_WORD, START_WORD, OOV_WORD = "<pad>", "<start>", "<unk>"
HUB_NAME = "stanfordnlp/imdb"
DATA_ENV = "TORCH_IMDB_DATA"

# Keras' default `filters` for text_to_word_sequence; the apostrophe is kept,
# so "don't" stays one word as in the original.
_KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
_TRANSLATE = str.maketrans({c: " " for c in _KERAS_FILTERS})


def tokenize(text: str) -> list[str]:
    """Split a review into words the way Keras' ``text_to_word_sequence`` does.

    Lowercases, removes HTML line breaks (``<br />``), turns punctuation into
    spaces and splits on whitespace. Unicode letters and emoji are kept as
    they are (they become words or parts of words).
    """
    text = text.lower().replace("<br />", " ").replace("<br/>", " ").replace("<br>", " ")
    return text.translate(_TRANSLATE).split()


@dataclass(frozen=True)
class Vocab:
    """Words in frequency order; ``words[k]`` has id ``k + 3``.

    Only the first ``max_features - 3`` words get an id; every other word
    maps to the OOV id 2, exactly like ``imdb.load_data(num_words=...)``.
    """

    words: tuple[str, ...]

    @classmethod
    def build(cls, texts: Iterable[str], max_features: int = 20000) -> "Vocab":
        """Count words over ``texts`` (the train split only) and keep the top ones.

        Ties in frequency keep first-seen order, as Keras' Tokenizer does.
        """
        if max_features <= N_RESERVED:
            raise UsageError(f"max_features must be > {N_RESERVED} (ids 0-2 are reserved); got {max_features}")
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text))
        ranked = sorted(counts, key=counts.__getitem__, reverse=True)  # stable: ties keep first-seen order
        return cls(tuple(ranked[: max_features - N_RESERVED]))

    @property
    def size(self) -> int:
        """Number of ids the embedding needs (reserved ids included)."""
        return len(self.words) + N_RESERVED

    def index(self) -> dict[str, int]:
        return {w: k + N_RESERVED for k, w in enumerate(self.words)}

    def encode(self, text: str, maxlen: int = 80, index: dict[str, int] | None = None) -> np.ndarray:
        """Encode one review into ``maxlen`` ids (int64), start marker first, 'pre' padded/truncated."""
        index = self.index() if index is None else index
        ids = [START_ID] + [index.get(w, OOV_ID) for w in tokenize(text)]
        return pad_pre(ids, maxlen)

    def encode_many(self, texts: Sequence[str], maxlen: int = 80) -> np.ndarray:
        """Encode reviews into an int64 array of shape (len(texts), maxlen)."""
        index = self.index()
        out = np.zeros((len(texts), maxlen), dtype=np.int64)
        for row, text in enumerate(texts):
            out[row] = self.encode(text, maxlen, index)
        return out

    def word(self, token_id: int) -> str:
        """The word shown for an id: reserved ids get placeholders, others their word."""
        if token_id == PAD_ID:
            return PAD_WORD
        if token_id == START_ID:
            return START_WORD
        if token_id == OOV_ID or token_id - N_RESERVED >= len(self.words):
            return OOV_WORD
        return self.words[token_id - N_RESERVED]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.word(int(i)) for i in ids]

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.words).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"words": list(self.words)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        """The vocabulary :meth:`to_json` wrote; a ValueError unless it is a bijection between words and ids: each word
        once, each a word that :func:`tokenize` gives (so encoding a word gives back its id)."""
        words = json.loads(text).get("words") if text.lstrip().startswith("{") else None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError("not a vocabulary: expected {\"words\": [strings]}")
        first: dict[str, int] = {}
        for k, w in enumerate(words):
            if w in first:
                raise ValueError(f"not a vocabulary: word {w[:40]!r} has ids {first[w] + N_RESERVED} and "
                                 f"{k + N_RESERVED}; each word must have one id")
            if tokenize(w) != [w]:
                raise ValueError(f"not a vocabulary: id {k + N_RESERVED} holds {w[:40]!r}, which is not one word as "
                                 "torch_imdb splits text")
            first[w] = k
        return cls(tuple(words))


def pad_pre(ids: Sequence[int], maxlen: int) -> np.ndarray:
    """Keras ``pad_sequences(padding='pre', truncating='pre')`` for one sequence."""
    out = np.zeros(maxlen, dtype=np.int64)
    tail = list(ids)[-maxlen:] if maxlen > 0 else []
    if tail:
        out[maxlen - len(tail) :] = tail
    return out


def resolve_data_path(path: str | None) -> str | None:
    """``--data`` wins, then ``$TORCH_IMDB_DATA``; ``None`` means the Hugging Face hub."""
    return path or os.environ.get(DATA_ENV) or None


_DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".json", ".jsonl")


def load_imdb(path: str | os.PathLike | None = None):
    """Load IMDB as a ``datasets.DatasetDict`` with ``train`` and ``test`` splits.

    ``path`` is a local copy in the hub layout of ``stanfordnlp/imdb``; ``None``
    reads ``$TORCH_IMDB_DATA`` and falls back to the hub. Every failure becomes
    a one-line :class:`UsageError` saying what to do.
    """
    import datasets

    path = resolve_data_path(None if path is None else os.fspath(path))  # datasets takes str paths only
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()  # the local card's YAML draws a harmless warning
    if path is not None:
        folder = Path(path)
        if not folder.exists():
            raise UsageError(f"data path {path} does not exist; pass --data or set {DATA_ENV} to a local IMDB copy "
                             "(e.g. ../shared/data/imdb)")
        if folder.is_dir() and not any(p.suffix in _DATA_SUFFIXES for p in folder.rglob("*")):
            raise UsageError(f"data folder {path} holds no data files (expected e.g. plain_text/train-*.parquet "
                             "and plain_text/test-*.parquet, the hub layout of stanfordnlp/imdb)")
    source = path if path is not None else HUB_NAME
    try:
        ds = datasets.load_dataset(source)
    except Exception as exc:  # datasets raises many types; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if path is None:
            raise UsageError(f"could not load {HUB_NAME} from the Hugging Face hub ({first}); with no network, "
                             f"set {DATA_ENV}=/path/to/imdb or pass --data PATH") from None
        raise UsageError(f"could not read an IMDB dataset from {path}: {first}") from None
    for split in ("train", "test"):
        if split not in ds:
            raise UsageError(f"dataset at {source} has no '{split}' split (found: {', '.join(ds)}); "
                             "expected the stanfordnlp/imdb layout with train and test")
        missing = {"text", "label"} - set(ds[split].column_names)
        if missing:
            raise UsageError(f"split '{split}' of {source} lacks column(s) {', '.join(sorted(missing))}; "
                             "expected columns 'text' and 'label'")
    return ds


def encode_split(split, vocab: Vocab, maxlen: int, cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Encode a ``datasets`` split into ids (N, maxlen) int64 and labels (N,) float32.

    With ``cache_dir``, the result is stored under a key made of the split's
    fingerprint, the vocabulary and ``maxlen``, so a second run skips tokenizing.
    """
    cache = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{split._fingerprint}|{vocab.fingerprint()}|{maxlen}".encode()).hexdigest()[:20]
        cache = Path(cache_dir) / f"encoded-{key}.npy"
        if cache.exists():
            stored = np.load(cache)
            return stored[:, :-1].astype(np.int64), stored[:, -1].astype(np.float32)
    ids = vocab.encode_many(split["text"], maxlen)
    labels = np.asarray(split["label"], dtype=np.float32)
    if cache is not None:
        atomic_save_npy(cache, np.concatenate([ids, labels[:, None].astype(np.int64)], axis=1))
    return ids, labels


def sample_indices(n_total: int, k: int, seed: int, what: str = "rows") -> np.ndarray:
    """``k`` distinct row indices out of ``n_total``, drawn with ``seed``.

    IMDB splits are ordered negatives first, so "the first k" would be all
    negative; every background set or example set goes through here.
    """
    if k <= 0:
        raise UsageError(f"{what}: need at least 1, got {k}")
    if k > n_total:
        raise UsageError(f"{what}: asked for {k} but the split has only {n_total}; choose at most {n_total}")
    return np.random.default_rng(seed).choice(n_total, size=k, replace=False)
