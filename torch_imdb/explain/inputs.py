"""Several explained inputs: a model whose forward takes a tuple such as (token ids, float features), each attributed.

The engines explain one tensor. A tuple of inputs is laid out as one: each input's explained
values (the embedding of its token ids, or its floats as they are) flattened and put side by
side, (n, D). The explainable copy cuts them apart again before the model's forward pass (a
slice and a view per input, both linear, each keeping the batch on dim 0), so that every rule,
the fused recurrence, both libraries and the guard see one explained batch, and the values
come back as one array per input. Token ids travel beside them as constants, put side by side
the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import prod

import numpy as np
import torch

from torch_imdb.errors import UsageError


@dataclass(frozen=True)
class Part:
    """One input of a tuple: token ids (``tokens``) or floats, each row of ``shape``; ``width`` is the embedding's
    width for token ids (known once the model has embedded them)."""

    tokens: bool
    shape: tuple[int, ...]
    width: int = 0

    @property
    def explained(self) -> tuple[int, ...]:
        """One row's explained shape: the ids' embeddings (*shape, width), or the floats' shape."""
        return (*self.shape, self.width) if self.tokens else self.shape


class Layout:
    """Where each input of a tuple lies in the one explained tensor (n, D) and in the one tensor of ids (n, L)."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts

    def with_widths(self, widths: list[int]) -> "Layout":
        """The layout with the embedding widths of its token inputs (one per part; floats' ignored)."""
        return Layout([replace(p, width=w) if p.tokens else p for p, w in zip(self.parts, widths)])

    @property
    def steps(self) -> int:
        """An upper bound on any input's time steps: the largest size of any of its dims."""
        return max((max(p.shape, default=1) for p in self.parts), default=1)

    @property
    def tokens(self) -> bool:
        """Whether any input holds token ids."""
        return any(p.tokens for p in self.parts)

    def pack(self, explained: list[torch.Tensor]) -> torch.Tensor:
        """The inputs' explained values (each (n, *part.explained)) side by side: (n, D)."""
        return torch.cat([e.reshape(len(e), -1) for e in explained], dim=1)

    def unpack(self, packed: torch.Tensor) -> list[torch.Tensor]:
        """The inputs' explained values (each (n, *part.explained)) of a packed (n, D) tensor."""
        return _cut(packed, [p.explained for p in self.parts])

    def pack_ids(self, inputs: list[torch.Tensor]) -> torch.Tensor | None:
        """The token inputs' ids side by side, (n, L); None when no input holds token ids."""
        ids = [x.reshape(len(x), -1) for x, p in zip(inputs, self.parts) if p.tokens]
        return torch.cat(ids, dim=1) if ids else None

    def unpack_ids(self, ids: torch.Tensor | None) -> list[torch.Tensor | None]:
        """Each input's ids (n, *part.shape) of packed ids (n, L), None for a float input."""
        token_parts = [p for p in self.parts if p.tokens]
        cut = iter(_cut(ids, [p.shape for p in token_parts]) if token_parts else [])
        return [next(cut) if p.tokens else None for p in self.parts]

    def values(self, packed: np.ndarray) -> tuple[np.ndarray, ...]:
        """One array per input of packed values (n, D): (n, *shape) per token for token ids (each token's share
        summed over its embedding), (n, *shape) for floats."""
        cut = _cut(torch.from_numpy(np.ascontiguousarray(packed)), [p.explained for p in self.parts])
        return tuple((v.sum(dim=-1) if p.tokens else v).numpy() for v, p in zip(cut, self.parts))


def _cut(packed: torch.Tensor, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Consecutive column blocks of ``packed`` (n, sum of sizes), each viewed as (n, *shape)."""
    out, start = [], 0
    for shape in shapes:
        size = prod(shape)
        out.append(packed[:, start:start + size].reshape(len(packed), *shape))
        start += size
    return out


def several(inputs) -> bool:
    """Whether ``inputs`` is a tuple or list of inputs (rather than one tensor)."""
    return isinstance(inputs, (tuple, list))


def check_several(inputs, baselines) -> Layout:
    """The layout of a tuple of inputs against a tuple of baselines, or a one-line error naming the input at fault.

    Each input k is a tensor (n, ...) of token ids (integers) or floats; its baselines (B, ...) have the same kind and
    the same shape past the batch; every input has the same n rows and every baseline the same B.
    """
    if not several(baselines) or len(baselines) != len(inputs):
        raise UsageError(f"{len(inputs)} inputs need a tuple of {len(inputs)} baselines, one per input, "
                         f"got {type(baselines).__name__}" + (f" of {len(baselines)}" if several(baselines) else ""))
    if not inputs:
        raise UsageError("inputs is an empty tuple; pass at least one tensor")
    parts = []
    for k, (x, r) in enumerate(zip(inputs, baselines)):
        if not isinstance(x, torch.Tensor) or not isinstance(r, torch.Tensor):
            raise UsageError(f"input {k} and its baselines must be tensors, got {type(x).__name__} and "
                             f"{type(r).__name__}")
        if x.dim() < 1 or r.dim() < 1 or len(x) == 0 or len(r) == 0:
            raise UsageError(f"input {k} must have a batch dim with >= 1 row, as must its baselines; got "
                             f"{tuple(x.shape)} and {tuple(r.shape)}")
        if x.shape[1:] != r.shape[1:]:
            raise UsageError(f"input {k} is {tuple(x.shape[1:])} per row but its baselines {tuple(r.shape[1:])}")
        if x.is_floating_point() != r.is_floating_point():
            raise UsageError(f"input {k} and its baselines must both be token ids or both floats, got {x.dtype} "
                             f"and {r.dtype}")
        if x.is_floating_point():
            if not (torch.isfinite(x).all() and torch.isfinite(r).all()):
                raise UsageError(f"input {k} or its baselines hold NaN or infinite values")
        elif x.dtype not in (torch.int64, torch.int32) or r.dtype != x.dtype:
            raise UsageError(f"input {k} must be int64 or int32 token ids (its baselines the same), got {x.dtype} "
                             f"and {r.dtype}")
        elif min(int(x.min()), int(r.min())) < 0:
            raise UsageError(f"input {k} or its baselines hold negative token ids")
        parts.append(Part(not x.is_floating_point(), tuple(x.shape[1:])))
    rows = {len(x) for x in inputs}
    if len(rows) > 1:
        raise UsageError(f"the inputs have different numbers of rows {[len(x) for x in inputs]}; each row of each "
                         "input is one example")
    refs = {len(r) for r in baselines}
    if len(refs) > 1:
        raise UsageError(f"the baselines have different numbers of rows {[len(r) for r in baselines]}; row b of "
                         "each is one reference")
    return Layout(parts)
