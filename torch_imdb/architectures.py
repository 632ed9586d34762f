"""The models of reviews beyond the Keras example's shape, and the one place that builds a model from its config.

:class:`~torch_imdb.model.SentimentRNN` (``architecture="rnn"``) is the Keras example and its
recurrent variants. The others are shapes people write around recurrent layers, each a
:class:`~torch_imdb.model.ReviewClassifier` (ids (batch, T) -> logits (batch,)) trained by the same
loop and explained by the same engines:

- ``"han"``, a hierarchical attention network (Yang et al. 2016) over fixed chunks: the review cut
  into chunks of ``CHUNK`` words (zero vectors in front make a whole number of chunks),
  a word-level bidirectional GRU with additive attention over each chunk, then a chunk-level
  bidirectional GRU with additive attention over the chunks;
- ``"cnn-lstm"``: Conv1d(E -> H, kernel 5) + ReLU + MaxPool1d(2) over the words, then an LSTM(H)
  whose final state feeds the classifier;
- ``"lstm-bigru"``: an LSTM(H) whose outputs feed a bidirectional GRU(H), whose two final states
  feed the classifier.

Their dropout is ``config.dropout`` on the embeddings in training; Keras' recurrent dropout is the
Keras example's (``"rnn"``) alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torch_imdb.config import CONV_KERNEL, CONV_POOL, HAN_CHUNK, ModelConfig
from torch_imdb.model import ReviewClassifier, SentimentRNN, additive_attention


class AdditiveAttention(nn.Module):
    """score_t = v . tanh(W h_t + b), alpha = softmax over dim 1, context = sum_t alpha_t h_t: (batch, T, D) ->
    (batch, D)."""

    def __init__(self, width: int, attention_dim: int) -> None:
        super().__init__()
        self.score, self.v = nn.Linear(width, attention_dim), nn.Linear(attention_dim, 1, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (additive_attention(self.score, self.v, h).unsqueeze(-1) * h).sum(dim=1)


class EmbeddedReviews(ReviewClassifier):
    """The front the architectures besides ``"rnn"`` share: ids -> Embedding -> Dropout(``config.dropout``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The embedded ids (batch, T, E), with dropout in training."""
        return self.dropout(self.embedding(ids))


class HierarchicalAttention(EmbeddedReviews):
    """A hierarchical attention network over chunks of ``CHUNK`` words (see the module's docstring)."""

    CHUNK = HAN_CHUNK

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        H = config.hidden
        self.words = nn.GRU(config.embed_dim, H, batch_first=True, bidirectional=True)
        self.word_attention = AdditiveAttention(2 * H, config.attention_dim)
        self.chunks = nn.GRU(2 * H, H, batch_first=True, bidirectional=True)
        self.chunk_attention = AdditiveAttention(2 * H, config.attention_dim)
        self.fc = nn.Linear(2 * H, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n, T = ids.shape
        # zero vectors in front up to a whole number of chunks (the reviews are padded in front too)
        words = F.pad(self.embed(ids), (0, 0, (-T) % self.CHUNK, 0))
        chunks = words.shape[1] // self.CHUNK
        words = words.reshape(n * chunks, self.CHUNK, -1)
        summaries = self.word_attention(self.words(words)[0]).reshape(n, chunks, -1)
        return self.fc(self.chunk_attention(self.chunks(summaries)[0])).squeeze(-1)


class ConvLSTM(EmbeddedReviews):
    """Conv1d(E -> H, kernel ``KERNEL``, same length) + ReLU + MaxPool1d(``POOL``) -> LSTM(H) -> its final state ->
    Linear."""

    KERNEL, POOL = CONV_KERNEL, CONV_POOL

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        H = config.hidden
        self.conv = nn.Conv1d(config.embed_dim, H, self.KERNEL, padding=self.KERNEL // 2)
        self.pool = nn.MaxPool1d(self.POOL)
        self.rnn = nn.LSTM(H, H, batch_first=True)
        self.fc = nn.Linear(H, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids).transpose(1, 2)  # (batch, E, T): Conv1d's layout
        features = self.pool(torch.relu(self.conv(x))).transpose(1, 2)  # (batch, T // POOL, H)
        return self.fc(self.rnn(features)[1][0][-1]).squeeze(-1)


class StackedLSTMBiGRU(EmbeddedReviews):
    """LSTM(H) -> its outputs -> bidirectional GRU(H) -> both final states -> Linear."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        H = config.hidden
        self.rnn = nn.LSTM(config.embed_dim, H, batch_first=True)  # not "lstm": old checkpoints' name for "rnn"
        self.gru = nn.GRU(H, H, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * H, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h_n = self.gru(self.rnn(self.embed(ids))[0])[1]  # (2, batch, H)
        return self.fc(torch.cat([h_n[0], h_n[1]], dim=1)).squeeze(-1)


# config.ARCHITECTURES names these (tested equal)
MODELS: dict[str, type[ReviewClassifier]] = {"rnn": SentimentRNN, "han": HierarchicalAttention, "cnn-lstm": ConvLSTM,
                                             "lstm-bigru": StackedLSTMBiGRU}


def build_model(config: ModelConfig) -> ReviewClassifier:
    """A new model of ``config.architecture`` with ``config``'s settings (randomly initialised)."""
    return MODELS[config.architecture](config)


def parameter_count(config: ModelConfig) -> int:
    """Parameters of ``build_model(config)``, counted on the meta device: nothing allocated, so a huge config is
    refused before it is built."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(config).parameters())
