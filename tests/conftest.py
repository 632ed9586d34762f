"""Shared fixtures: tiny IMDB-layout folders written by the tests, tiny models, the real data when set."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from torch_imdb.cells import SPECS
from torch_imdb.model import ModelConfig, SentimentRNN

# The property-based tests: a fixed seed (derandomize) and a bounded number of examples, so CI is repeatable and short.
# TORCH_IMDB_HYPOTHESIS=long runs a longer, randomized search by hand.
settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("TORCH_IMDB_HYPOTHESIS", "ci"))

ROOT = Path(__file__).resolve().parents[1]
# Every command a user runs: the package's modules and the benchmark scripts.
COMMANDS = ["torch_imdb.train", "torch_imdb.explain", "torch_imdb.words", "torch_imdb.series", "torch_imdb.report",
            "torch_imdb.report_check", "benchmarks/explainer_speed.py", "benchmarks/faithfulness.py",
            "benchmarks/faithfulness_summary.py", "benchmarks/frontier.py", "benchmarks/length_sweep.py",
            "benchmarks/scale_out.py"]


def command_parser(command: str):
    """The argparse parser of a command of COMMANDS (a module name, or a script's path from the repository root)."""
    if command.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(command).stem, ROOT / command)
        mod = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(ROOT))
        spec.loader.exec_module(mod)
        return mod.build_parser()
    name = command + ".__main__" if command == "torch_imdb.explain" else command
    return importlib.import_module(name).build_parser()


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
    cfg = TrainConfig.of(epochs=5, lr=5e-3, maxlen=16, embed_dim=12, hidden=10, data=str(data), device="cpu")
    write_metrics(root / "ck" / "metrics.json", fit(cfg, root / "ck", log=lambda *_: None))
    return root / "ck", data


@pytest.fixture(scope="session")
def real_checkpoint(real_data, tmp_path_factory):
    """(checkpoint folder, data path): one epoch on 300 real reviews, for the per-stage integration tests."""
    from torch_imdb.training import TrainConfig, fit

    ck = tmp_path_factory.mktemp("real") / "ck"
    fit(TrainConfig.of(epochs=1, data=real_data, train_limit=300, test_limit=100, embed_dim=16, hidden=16,
                       device="cpu"), ck, log=lambda *_: None)
    return ck, real_data


# ---- the model matrix shared by the twin's and the fast engine's tests

CELLS = {spec.name: spec for spec in SPECS}  # every cell the specs define: the matrices cover each


class UserModel(nn.Module):
    """What a user might bring: [embedding ->] LSTM/GRU -> Linear -> sigmoid | logits | identity."""

    def __init__(self, cell: str, layers: int, bidirectional: bool, tokens: bool, head: str) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 4) if tokens else None
        self.rnn = CELLS[cell].make(4, 3, num_layers=layers, bidirectional=bidirectional, batch_first=True)
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


# Weights are doubled so the cells run far from linear and a wrong rule shows; a relu RNN is unbounded
# and doubling saturates the sigmoid head (values near 0): it keeps its weights.
GAIN = {"rnn_relu": 1.0}


def scaled(model: nn.Module, seed: int, gain: float = 2.0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(gain)
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
    model = scaled(UserModel(cell, layers, bi, tokens, head), seed, GAIN.get(cell, 2.0))
    x, bg = random_inputs(tokens, seed, n=n, b=b)
    return model, x, bg, 2 if head == "logits" else 0


# ---- the head matrix: the models people write around an LSTM/GRU (the transform's and the fast engine's tests)

HEADS = ("functional-sigmoid", "mlp-relu-dropout", "mean", "masked-mean", "max", "attention", "layernorm",
         "rnn-twice", "two-inputs", "dict-output", "packed")
T, E, H = 5, 4, 3


class HeadModel(nn.Module):
    """[Embedding(padding_idx=0) ->] LSTM/GRU -> one of HEADS. Token models compute their mask and
    lengths from the ids; float models take the mask (batch, T) as an extra argument."""

    def __init__(self, cell: str, tokens: bool, head: str) -> None:
        super().__init__()
        self.head = head
        self.embedding = nn.Embedding(12, E, padding_idx=0) if tokens else None
        bidirectional = head in ("attention", "packed", "max")
        self.rnn = CELLS[cell].make(E, H, batch_first=True, bidirectional=bidirectional)
        width = H * (2 if bidirectional else 1)
        self.fc1 = nn.Linear(width, 4)
        self.fc = nn.Linear(4 if head == "mlp-relu-dropout" else width + (2 if head == "two-inputs" else 0), 1)
        self.attn = nn.Linear(width, 4)
        self.attn_v = nn.Linear(4, 1, bias=False)
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, side: torch.Tensor | None = None):
        if self.embedding is not None:
            mask = x != 0
            x = self.embedding(x)
        head = self.head
        if head == "packed":
            packed = pack_padded_sequence(x, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            return torch.sigmoid(self.fc((out * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)))
        out, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h
        last = torch.cat(list(h[-(2 if self.rnn.bidirectional else 1):]), dim=1)
        if head == "functional-sigmoid":
            return torch.sigmoid(self.fc(last)).squeeze(-1)
        if head == "mlp-relu-dropout":
            return torch.sigmoid(self.fc(F.dropout(F.relu(self.fc1(self.drop(last))), 0.2, self.training)))
        if head == "mean":
            return self.fc(out.mean(dim=1))
        if head == "masked-mean":
            m = mask.unsqueeze(-1).to(out.dtype)
            return torch.sigmoid(self.fc((out * m).sum(1) / m.sum(1)))
        if head == "max":
            return self.fc(out.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values)
        if head == "attention":
            scores = self.attn_v(torch.tanh(self.attn(out))).squeeze(-1).masked_fill(~mask, float("-inf"))
            alpha = F.softmax(scores, dim=-1)
            return torch.sigmoid(self.fc(torch.bmm(alpha.unsqueeze(1), out).squeeze(1)))
        if head == "layernorm":
            return self.fc(F.gelu(self.norm(out))[:, -1])
        if head == "rnn-twice":
            _, h2 = self.rnn(x.flip(1))
            h2 = h2[0] if isinstance(h2, tuple) else h2
            return torch.sigmoid(self.fc(last * h2[-1]))
        if head == "two-inputs":
            return self.fc(torch.cat([last, side], dim=1))
        if head == "dict-output":
            logit = self.fc(last)
            return {"logit": logit, "probability": torch.sigmoid(logit)}
        raise AssertionError(head)


HEAD_MATRIX = [(head, cell, tokens) for head in HEADS for cell in CELLS for tokens in (True, False)]


def head_case_id(case):
    head, cell, tokens = case
    return f"{head}-{cell}-{'ids' if tokens else 'float'}"


def head_case(case, dtype=torch.float64):
    """(model, inputs, baselines, additional_forward_args, output) of one case, seeded by its place."""
    head, cell, tokens = case
    seed = HEAD_MATRIX.index(case)
    torch.manual_seed(seed)
    model = HeadModel(cell, tokens, head)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(GAIN.get(cell, 2.0))  # far from linear, so a wrong rule shows
    model = model.to(dtype).eval()
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 3])
    mask = torch.arange(T)[None] < lengths[:, None]  # post-padding, as pack_padded_sequence expects
    if tokens:
        x = torch.randint(1, 12, (2, T), generator=g) * mask
        bg = torch.randint(0, 12, (3, T), generator=g)
        extra = ()
    else:
        x = torch.randn(2, T, E, generator=g, dtype=dtype)
        bg = torch.randn(3, T, E, generator=g, dtype=dtype)
        extra = (mask,)
    if head == "two-inputs":
        extra = (extra[0] if extra else None, torch.randn(2, 2, generator=g, dtype=dtype))
    return model, x, bg, extra, "probability" if head == "dict-output" else None
