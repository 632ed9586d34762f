"""The user's model as it is: the outputs that every engine's completeness guard checks against.

An engine explains a model through something it can differentiate (the transform's
explainable copy, the fast engine's heads), and the guard must not take that
thing's word for what the model outputs. :class:`OwnOutputs` runs the user's own
module, untouched (a deep copy in the explained dtype), so that an engine which
explains something other than the model (a mask computed from a placeholder, a
head that misses a residual path) is caught instead of checked against itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from torch_imdb.explain.transform import select_output
from torch_imdb.model import ReviewClassifier


class PositiveProbability(nn.Module):
    """P(positive) (batch, 1) of a model that returns logits (batch,): what the sentiment explanations explain."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor, *extra) -> torch.Tensor:
        return self.sigmoid(self.model(x, *extra).unsqueeze(1))


@dataclass
class RNNParts:
    """A model given in parts: [embedding ->] rnn -> Linear(final states) -> output.

    rnn: an ``nn.LSTM`` / ``nn.GRU``; head: ``nn.Linear`` on the final hidden
    state (D*H); embedding: ``nn.Embedding`` for token ids, None for float inputs;
    output: "sigmoid" (one output, explained as a probability), "logits" or "identity".
    """

    rnn: nn.Module
    head: nn.Linear
    embedding: nn.Embedding | None = None
    output: str = "identity"


class PartsModel(nn.Module):
    """:class:`RNNParts` as the module it describes, run with torch's own layers: (n, T) ids or (n, T, F) floats ->
    (n, K)."""

    def __init__(self, parts: RNNParts) -> None:
        super().__init__()
        self.rnn, self.head, self.embedding, self.output = parts.rnn, parts.head, parts.embedding, parts.output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, state = self.rnn(self.embedding(x) if self.embedding is not None else x)
        h_n = state[0] if isinstance(self.rnn, nn.LSTM) else state
        directions = 2 if self.rnn.bidirectional else 1
        out = self.head(h_n[-directions:].transpose(0, 1).reshape(len(x), -1))
        return torch.sigmoid(out) if self.output == "sigmoid" else out


def weights_stamp(model: nn.Module) -> tuple:
    """What changes when a module's weights do: each parameter's and buffer's identity, storage and version (an
    in-place change raises the version, an assignment changes the identity or the storage)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


class OwnOutputs(nn.Module):
    """The explained outputs (n, K) of the user's module as it is, in ``dtype``.

    model: the user's module (a :class:`~torch_imdb.model.ReviewClassifier` is explained as
    P(positive)), or :class:`RNNParts`; output: the entry of a tuple or dict output.
    The module is copied, so the user's own is never changed, and copied again when its weights have changed since
    (trained further, loaded, edited in place): the outputs are always those of the module as it is now.
    """

    def __init__(self, model, dtype: torch.dtype, output: int | str | None = None) -> None:
        super().__init__()
        if isinstance(model, RNNParts):
            model = PartsModel(model)
        elif isinstance(model, ReviewClassifier):
            model = PositiveProbability(model)
        self._source = (model,)  # in a tuple: not a submodule, so .to() never reaches the user's module
        self.dtype, self.output = dtype, output
        self._copy()

    @property
    def source(self) -> nn.Module:
        """The user's module (as a module: RNNParts and ReviewClassifier wrapped as they are explained)."""
        return self._source[0]

    def current(self) -> nn.Module:
        """The copy of the user's module as it is now: made again if the module's weights changed since."""
        if weights_stamp(self._source[0]) != self._stamp:
            self._copy()
        return self.model

    def _copy(self) -> None:
        self._stamp = weights_stamp(self._source[0])
        self.model = copy.deepcopy(self._source[0]).to(self.dtype).eval()

    @torch.no_grad()
    def forward(self, inputs: torch.Tensor | tuple, *extra) -> torch.Tensor:
        """The explained outputs (n, K) of inputs (n, ...), or of a tuple of inputs the model's forward takes first,
        each moved to the model's device (a model without weights: where they are)."""
        self.current()
        xs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
        weight = next(self.parameters(), None)
        xs = [x if weight is None else x.to(weight.device) for x in xs]
        return select_output(self.model(*(x.to(self.dtype) if x.is_floating_point() else x for x in xs), *extra),
                             self.output)

    def n_outputs(self, baselines: torch.Tensor | tuple, extra: tuple = ()) -> int:
        """K, the model's explained outputs: one background row through it, with the first row of each extra."""
        first = [a[:1] if isinstance(a, torch.Tensor) else a for a in extra]
        rows = tuple(b[:1] for b in baselines) if isinstance(baselines, (tuple, list)) else baselines[:1]
        return self(rows, *first).shape[1]
