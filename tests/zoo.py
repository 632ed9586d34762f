"""A zoo of models people write around nn.LSTM / nn.GRU / nn.RNN, small and random, for the tests.

Each entry builds (model, inputs, references, extra forward arguments, output, target): token ids
(n, T) or float sequences (n, T, F), float64. They cover fronts (an embedding with padding_idx, a
CNN front end, float and side features), recurrent parts (one or two modules, stacked,
bidirectional, packed, time-major, called twice, an initial state from side features) and heads
(last, mean, max, masked mean, attention with masked_fill and a temperature, functional MLPs,
LayerNorm, a residual from the embedding, gating, a transformer layer, tuple and dict outputs,
several classes), with a hierarchical attention network among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

V, E, H, T = 30, 6, 5, 12  # vocabulary, embedding, hidden units, steps


class Tokens(nn.Module):
    """Embedding (padding_idx 0) -> recurrent -> a head: the pieces most zoo models share."""

    def __init__(self, cell=nn.LSTM, bidirectional: bool = False, layers: int = 1, width: int = E) -> None:
        super().__init__()
        self.embedding = nn.Embedding(V, E, padding_idx=0)
        self.rnn = cell(width, H, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.D = 2 if bidirectional else 1
        self.fc = nn.Linear(self.D * H, 1)


class Last(Tokens):
    def forward(self, ids):
        out, _ = self.rnn(self.embedding(ids))
        return self.fc(out[:, -1]).squeeze(-1)


class FinalState(Tokens):
    def forward(self, ids):
        _, state = self.rnn(self.embedding(ids))
        h = state[0] if isinstance(state, tuple) else state
        return torch.sigmoid(self.fc(torch.cat(list(h[-self.D:]), dim=-1))).squeeze(-1)


class Mean(Tokens):
    def forward(self, ids):
        return self.fc(self.rnn(self.embedding(ids))[0].mean(1)).squeeze(-1)


class Max(Tokens):
    def forward(self, ids):
        return self.fc(self.rnn(self.embedding(ids))[0].amax(1)).squeeze(-1)


class MaskedMean(Tokens):
    def forward(self, ids):
        keep = (ids != 0).unsqueeze(-1).to(self.fc.weight.dtype)
        out = self.rnn(self.embedding(ids))[0]
        return self.fc((out * keep).sum(1) / keep.sum(1).clamp(min=1)).squeeze(-1)


class Attention(Tokens):
    """Additive attention with masked_fill and a temperature."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.score = nn.Linear(self.D * H, 4)
        self.v = nn.Linear(4, 1, bias=False)

    def forward(self, ids):
        out = self.rnn(self.embedding(ids))[0]
        scores = self.v(torch.tanh(self.score(out))).squeeze(-1).masked_fill(ids == 0, float("-inf"))
        alpha = torch.softmax(scores / 0.7, dim=1)
        return torch.sigmoid(self.fc((alpha.unsqueeze(-1) * out).sum(1))).squeeze(-1)


class Packed(Attention):
    """The README's classifier: padding at the end, packed by the lengths from the ids, attention, an MLP."""

    def __init__(self) -> None:
        super().__init__(bidirectional=True)
        self.fc1, self.fc2 = nn.Linear(2 * H, 7), nn.Linear(7, 1)

    def forward(self, ids):
        mask = ids != 0
        packed = pack_padded_sequence(self.embedding(ids), mask.sum(1).clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=ids.shape[1])
        alpha = torch.softmax(self.v(torch.tanh(self.score(out))).squeeze(-1).masked_fill(~mask, float("-inf")), 1)
        return torch.sigmoid(self.fc2(F.relu(self.fc1((alpha.unsqueeze(-1) * out).sum(1))))).squeeze(-1)


class FunctionalMLP(Tokens):
    def __init__(self) -> None:
        super().__init__(cell=nn.GRU)
        self.fc1, self.fc2 = nn.Linear(H, 7), nn.Linear(7, 1)

    def forward(self, ids):
        h = self.rnn(self.embedding(ids))[0].mean(1)
        return self.fc2(F.silu(F.gelu(self.fc1(h)) * 1.3)).squeeze(-1)


class Normed(Tokens):
    def __init__(self) -> None:
        super().__init__(bidirectional=True)
        self.norm = nn.LayerNorm(2 * H)

    def forward(self, ids):
        return self.fc(self.norm(self.rnn(self.embedding(ids))[0][:, -1])).squeeze(-1)


class ResidualEmbedding(Tokens):
    """A head that also reads the embedding around the recurrent layer (a skip connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = nn.Linear(E, 1)

    def forward(self, ids):
        x = self.embedding(ids)
        return (self.fc(self.rnn(x)[0].mean(1)) + self.skip(x.mean(1))).squeeze(-1)


class BagAndRecurrence(Tokens):
    """A bag of embeddings beside the recurrence, joined before the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(H + E, 1)

    def forward(self, ids):
        x = self.embedding(ids)
        return torch.sigmoid(self.out(torch.cat([self.rnn(x)[0][:, -1], x.sum(1)], dim=-1))).squeeze(-1)


class Gated(Tokens):
    def __init__(self) -> None:
        super().__init__(cell=nn.GRU, bidirectional=True)
        self.gate = nn.Linear(2 * H, 2 * H)

    def forward(self, ids):
        out = self.rnn(self.embedding(ids))[0]
        return self.fc((torch.sigmoid(self.gate(out)) * torch.tanh(out)).mean(1)).squeeze(-1)


class Transformer(Tokens):
    def __init__(self) -> None:
        super().__init__(bidirectional=True)
        self.layer = nn.TransformerEncoderLayer(2 * H, 2, 8, dropout=0.0, batch_first=True)

    def forward(self, ids):
        return self.fc(self.layer(self.rnn(self.embedding(ids))[0], src_key_padding_mask=ids == 0).mean(1)).squeeze(-1)


class TupleOut(Tokens):
    def forward(self, ids):
        out, state = self.rnn(self.embedding(ids))
        return self.fc(out[:, -1]), state


class DictOut(Tokens):
    def forward(self, ids):
        out, state = self.rnn(self.embedding(ids))
        return {"logit": self.fc(out.mean(1)), "hidden": state}


class Classes(Tokens):
    def __init__(self) -> None:
        super().__init__(cell=nn.GRU, layers=2)
        self.fc = nn.Linear(H, 3)

    def forward(self, ids):
        return torch.log_softmax(self.fc(self.rnn(self.embedding(ids))[0][:, -1]), dim=-1)


class LogSumExp(Tokens):
    def forward(self, ids):
        return self.fc(torch.logsumexp(self.rnn(self.embedding(ids))[0], dim=1)).squeeze(-1)


class Normalized(Tokens):
    def forward(self, ids):
        return self.fc(F.normalize(self.rnn(self.embedding(ids))[0].mean(1), dim=-1) * 2).squeeze(-1)


class AdaptiveMax(Tokens):
    def forward(self, ids):
        return self.fc(F.adaptive_max_pool1d(self.rnn(self.embedding(ids))[0].transpose(1, 2), 1)[..., 0]).squeeze(-1)


class ConvFront(Tokens):
    """The CNN-LSTM: embedding -> Conv1d -> ReLU -> MaxPool1d -> LSTM."""

    def __init__(self) -> None:
        super().__init__(width=8)
        self.conv, self.pool = nn.Conv1d(E, 8, 3, padding=1), nn.MaxPool1d(2)

    def forward(self, ids):
        c = self.pool(F.relu(self.conv(self.embedding(ids).transpose(1, 2))))
        return self.fc(self.rnn(c.transpose(1, 2))[0][:, -1]).squeeze(-1)


class SideFeatures(Tokens):
    """Float side features (an extra forward argument) joined to the embedding."""

    def __init__(self) -> None:
        super().__init__(width=E + 2)

    def forward(self, ids, side):
        x = torch.cat([self.embedding(ids), side.unsqueeze(1).expand(-1, ids.shape[1], -1)], dim=-1)
        return self.fc(self.rnn(x)[0][:, -1]).squeeze(-1)


class InitialState(Tokens):
    """The recurrent layer starts from a state computed from side features."""

    def __init__(self) -> None:
        super().__init__(cell=nn.GRU)
        self.init = nn.Linear(2, H)

    def forward(self, ids, side):
        h0 = torch.tanh(self.init(side)).unsqueeze(0).contiguous()
        return self.fc(self.rnn(self.embedding(ids), h0)[0][:, -1]).squeeze(-1)


class TwoModules(Tokens):
    """An LSTM into a bidirectional GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.second = nn.GRU(H, H, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * H, 1)

    def forward(self, ids):
        return self.fc(self.second(self.rnn(self.embedding(ids))[0])[0].mean(1)).squeeze(-1)


class CalledTwice(Tokens):
    """One LSTM run over each half of the review, its two final outputs compared."""

    def forward(self, ids):
        x = self.embedding(ids)
        first, second = self.rnn(x[:, : T // 2])[0][:, -1], self.rnn(x[:, T // 2:])[0][:, -1]
        return self.fc(first * second + first).squeeze(-1)


class TimeMajor(Tokens):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(E, H, bidirectional=True)
        self.score, self.fc = nn.Linear(2 * H, 1), nn.Linear(2 * H, 1)

    def forward(self, ids):
        out = self.rnn(self.embedding(ids).transpose(0, 1))[0]  # (T, batch, 2H)
        alpha = torch.softmax(self.score(out).squeeze(-1).masked_fill((ids == 0).t(), float("-inf")), dim=0)
        return self.fc((alpha.unsqueeze(-1) * out).sum(0)).squeeze(-1)


class Hierarchical(nn.Module):
    """A hierarchical attention network: the review in 3 chunks of 4 words, a word-level BiGRU with attention over
    each chunk, then a chunk-level BiGRU with attention over the chunks."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(V, E, padding_idx=0)
        self.words = nn.GRU(E, H, batch_first=True, bidirectional=True)
        self.word_score = nn.Linear(2 * H, 1)
        self.chunks = nn.GRU(2 * H, H, batch_first=True, bidirectional=True)
        self.chunk_score = nn.Linear(2 * H, 1)
        self.fc = nn.Linear(2 * H, 1)

    def forward(self, ids):
        n = ids.shape[0]
        words = self.words(self.embedding(ids).reshape(n * 3, 4, E))[0]  # (n * 3 chunks, 4, 2H)
        alpha = torch.softmax(self.word_score(torch.tanh(words)).squeeze(-1), dim=1)
        chunks = (alpha.unsqueeze(-1) * words).sum(1).reshape(n, 3, 2 * H)
        out = self.chunks(chunks)[0]
        beta = torch.softmax(self.chunk_score(torch.tanh(out)).squeeze(-1), dim=1)
        return torch.sigmoid(self.fc((beta.unsqueeze(-1) * out).sum(1))).squeeze(-1)


class MaskFromInput(nn.Module):
    """Float steps whose padding is all zero, masked out of the mean: a mask computed from the explained input."""

    def __init__(self, packed: bool = False) -> None:
        super().__init__()
        self.packed = packed
        self.rnn, self.fc = nn.LSTM(3, H, batch_first=True), nn.Linear(H, 1)

    def forward(self, x):
        if self.packed:
            lengths = (x.abs().sum(-1) > 0).sum(1).clamp(min=1)  # LENGTHS FROM THE INPUT
            return self.fc(self.rnn(pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                                         enforce_sorted=False))[1][0][-1]).squeeze(-1)
        keep = (x.abs().sum(-1, keepdim=True) > 0).to(x.dtype)  # A MASK FROM THE INPUT
        return self.fc((self.rnn(x)[0] * keep).sum(1) / keep.sum(1).clamp(min=1)).squeeze(-1)


class MaskFromEmbedding(Tokens):
    def forward(self, ids):
        x = self.embedding(ids)
        keep = (x != 0).any(-1, keepdim=True).to(x.dtype)  # A MASK FROM THE EMBEDDING
        return self.fc((self.rnn(x)[0] * keep).sum(1) / keep.sum(1).clamp(min=1)).squeeze(-1)


class Series(nn.Module):
    """Float features (n, T, 3) -> a 2-layer GRU -> the last output."""

    def __init__(self, cell=nn.GRU, nonlinearity: str | None = None) -> None:
        super().__init__()
        extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
        self.rnn = cell(3, H, num_layers=2, batch_first=True, **extra)
        self.fc = nn.Linear(H, 1)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1]).squeeze(-1)


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    floats: bool = False
    side: bool = False  # an extra forward argument (n, 2) of side features
    output: int | str | None = None
    target: int = 0


ZOO = [
    Case("last", Last), Case("final-state-bigru", lambda: FinalState(cell=nn.GRU, bidirectional=True)),
    Case("stacked-bilstm", lambda: FinalState(bidirectional=True, layers=2)),
    Case("rnn-tanh", lambda: Last(cell=nn.RNN)),
    Case("mean", Mean), Case("max", Max), Case("masked-mean", MaskedMean),
    Case("attention", lambda: Attention(bidirectional=True)), Case("packed-attention-mlp", Packed),
    Case("functional-mlp", FunctionalMLP), Case("layer-norm", Normed), Case("residual-embedding", ResidualEmbedding),
    Case("bag-and-recurrence", BagAndRecurrence), Case("gated", Gated), Case("transformer-layer", Transformer),
    Case("tuple-output", TupleOut, output=0), Case("dict-output", DictOut, output="logit"),
    Case("three-classes", Classes, target=2), Case("logsumexp", LogSumExp), Case("normalize", Normalized),
    Case("adaptive-max", AdaptiveMax), Case("cnn-lstm", ConvFront), Case("side-features", SideFeatures, side=True),
    Case("initial-state", InitialState, side=True), Case("lstm-into-bigru", TwoModules),
    Case("called-twice", CalledTwice), Case("time-major", TimeMajor), Case("hierarchical-attention", Hierarchical),
    Case("series-gru", Series, floats=True), Case("series-rnn-relu", lambda: Series(nn.RNN, "relu"), floats=True),
]


# Masks or lengths computed from explained values: refused by every engine, naming the line.
REFUSED = [Case("mask-from-input", MaskFromInput, floats=True), Case("lengths-from-input", lambda: MaskFromInput(True),
                                                                         floats=True),
           Case("mask-from-embedding", MaskFromEmbedding)]


def zoo_inputs(case: Case, dtype=torch.float64, n: int = 2, B: int = 3):
    """(model, inputs, references, extra) of a case: seeded weights and data, padding at the end of input 1."""
    torch.manual_seed(sum(map(ord, case.name)))
    model = case.build().to(dtype).eval()
    g = torch.Generator().manual_seed(7)
    if case.floats:
        x, bg = torch.randn(n, T, 3, generator=g, dtype=dtype), torch.randn(B, T, 3, generator=g, dtype=dtype)
        x[1, -3:] = 0
    else:
        x, bg = torch.randint(1, V, (n, T), generator=g), torch.randint(0, V, (B, T), generator=g)
        x[1, -3:] = 0
    extra = (torch.randn(n, 2, generator=g, dtype=dtype),) if case.side else ()
    return model, x, bg, extra
