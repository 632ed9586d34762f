"""Shared fixtures: tiny IMDB-layout folders written by the tests, tiny models, the real data when set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torch_imdb.model import ModelConfig, SentimentRNN

POSITIVE = ["superb", "wonderful", "delight"]
NEGATIVE = ["awful", "boring", "dreadful"]
FILLER = [f"w{k}" for k in range(60)]


def write_imdb_folder(root: Path, splits: dict[str, tuple[list[str], list[int]]], columns=("text", "label")) -> Path:
    """Write splits as parquet files in the hub layout of stanfordnlp/imdb (plain_text/<split>-00000-of-00001.parquet)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    for split, (texts, labels) in splits.items():
        table = pa.table({columns[0]: texts, columns[1]: labels})
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
    return root


def planted_reviews(n: int, seed: int, length: int = 12) -> tuple[list[str], list[int]]:
    """Reviews of random filler words with one planted sentiment word; label = its polarity.

    Ordered negatives first, like the real data, so tests also catch "first N" sampling.
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for k in range(n):
        label = int(k >= n // 2)
        words = list(rng.choice(FILLER, size=length))
        words[rng.integers(0, length)] = str(rng.choice(POSITIVE if label else NEGATIVE))
        texts.append(" ".join(words) + ("!" if k % 3 == 0 else "."))
        labels.append(label)
    return texts, labels


@pytest.fixture
def planted_data(tmp_path: Path) -> Path:
    """A small IMDB-layout folder whose sentiment is decided by planted words."""
    return write_imdb_folder(tmp_path / "planted", {"train": planted_reviews(800, 0), "test": planted_reviews(200, 1)})


@pytest.fixture
def tiny_model() -> SentimentRNN:
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(vocab_size=40, embed_dim=8, hidden=6))
    with torch.no_grad():  # larger weights than Keras' init, so the function is far from linear
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="session")
def real_data() -> str:
    path = os.environ.get("TORCH_IMDB_DATA")
    if not path or not Path(path).exists():
        pytest.skip("integration test: set TORCH_IMDB_DATA to the IMDB copy (e.g. ../shared/data/imdb)")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(checkpoint folder, data folder): a model the tests train themselves on planted reviews (seconds on a CPU)."""
    from torch_imdb.training import TrainConfig, fit, write_metrics

    root = tmp_path_factory.mktemp("tiny_checkpoint")
    data = write_imdb_folder(root / "data", {"train": planted_reviews(400, 0), "test": planted_reviews(60, 1)})
    cfg = TrainConfig(epochs=5, lr=5e-3, maxlen=16, embed_dim=12, hidden=10, data=str(data), device="cpu")
    write_metrics(root / "ck" / "metrics.json", fit(cfg, root / "ck", log=lambda *_: None))
    return root / "ck", data


@pytest.fixture(scope="session")
def real_checkpoint(real_data, tmp_path_factory):
    """(checkpoint folder, data path): one epoch on 300 real reviews, for the per-stage integration tests."""
    from torch_imdb.training import TrainConfig, fit

    ck = tmp_path_factory.mktemp("real") / "ck"
    fit(TrainConfig(epochs=1, data=real_data, train_limit=300, test_limit=100, embed_dim=16, hidden=16, device="cpu"),
        ck, log=lambda *_: None)
    return ck, real_data


# ---- the model matrix shared by the twin's and the fast engine's tests

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class UserModel(nn.Module):
    """What a user might bring: [embedding ->] LSTM/GRU -> Linear -> sigmoid | logits | identity."""

    def __init__(self, cell: str, layers: int, bidirectional: bool, tokens: bool, head: str) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 4) if tokens else None
        self.rnn = CELLS[cell](4, 3, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.directions = 2 if bidirectional else 1
        self.fc = nn.Linear(3 * self.directions, 3 if head == "logits" else 1)
        self.out = nn.Sigmoid() if head == "sigmoid" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        _, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h
        return self.out(self.fc(torch.cat(list(h[-self.directions :]), dim=1)))


def random_inputs(tokens: bool, seed: int, n: int = 2, b: int = 3, T: int = 5):
    g = torch.Generator().manual_seed(seed)
    if tokens:
        return torch.randint(0, 20, (n, T), generator=g), torch.randint(0, 20, (b, T), generator=g)
    return torch.randn(n, T, 4, generator=g, dtype=torch.float64), torch.randn(b, T, 4, generator=g, dtype=torch.float64)


def scaled(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)  # far from linear, so a wrong rule shows
    return model.double().eval()


MATRIX = [(cell, layers, bi, tokens, head) for cell in CELLS for layers in (1, 2) for bi in (False, True)
          for tokens in (True, False) for head in ("sigmoid", "logits", "identity")]


def case_id(case):
    cell, layers, bi, tokens, head = case
    return f"{cell}-{layers}l-{'bi' if bi else 'uni'}-{'ids' if tokens else 'float'}-{head}"


def matrix_case(case, n: int = 2, b: int = 3):
    """(model, inputs, baselines, target) of one matrix case, seeded by its place in MATRIX."""
    cell, layers, bi, tokens, head = case
    seed = MATRIX.index(case)
    torch.manual_seed(seed)
    model = scaled(UserModel(cell, layers, bi, tokens, head), seed)
    x, bg = random_inputs(tokens, seed, n=n, b=b)
    return model, x, bg, 2 if head == "logits" else 0
