"""Which reviews an explanation draws: the seeded background from the train split and the seeded test reviews.

Both IMDB splits are ordered negatives first, so every command, benchmark and notebook draws its rows here,
with a seed (the background with ``seed``, the reviews with ``seed + 1``), never "the first N".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from torch_imdb.checkpoint import Checkpoint
from torch_imdb.data import encode_split, sample_indices


def sample_background(ckpt: Checkpoint, dataset, size: int, seed: int,
                      cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``size`` train rows drawn with ``seed`` and their ids (size, T): the reference set."""
    train = dataset["train"]
    rows = sample_indices(len(train), size, seed, what="--background")
    return rows, encode_split(train.select(rows), ckpt.vocab, ckpt.maxlen, cache_dir)[0]


def sample_test_reviews(ckpt: Checkpoint, dataset, size: int, seed: int,
                        cache_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``size`` test rows drawn with ``seed + 1``, their ids (size, T) and labels (size,)."""
    test = dataset["test"]
    rows = sample_indices(len(test), size, seed + 1, what="--reviews")
    ids, labels = encode_split(test.select(rows), ckpt.vocab, ckpt.maxlen, cache_dir)
    return rows, ids, labels
