"""The explainer protocol that every engine follows, its result, the input checks, and the completeness guard.

Every engine (:mod:`.engines` builds them by name) has

    attribute(inputs, baselines, target=0, additional_forward_args=()) -> Attribution

with token ids (N, T) and a background (B, T), or float sequences (N, T, F) and (B, T, F); for a model of several
inputs, a tuple of such tensors and a tuple of backgrounds (values: one array per input). Its values add up to
f(x) - E f(background) for every input, f being the user's own module at the explained output, and the guard
(:func:`check_completeness`) refuses values that do not, in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from torch_imdb.errors import CompletenessError, UsageError


@runtime_checkable
class Explainer(Protocol):
    """What every engine is: ``method`` names it, ``attribute`` explains inputs against baselines."""

    method: str

    def attribute(self, inputs: torch.Tensor | tuple, baselines: torch.Tensor | tuple, target: int = 0,
                  additional_forward_args: tuple = ()) -> "Attribution":
        """Attributions of inputs (N, T) ids or (N, T, F) floats against baselines (B, T[, F]) at output ``target``.

        Args:
            inputs: the sequences explained; for a model of several inputs a tuple of tensors (N, ...).
            baselines: the background; a tuple of (B, ...) for several inputs.
            target: the explained output column.
            additional_forward_args: further forward arguments, one row per input.

        Returns:
            An Attribution whose values add up to f(x) - E f for every input.
        """
        ...


@dataclass
class Attribution:
    """Attributions of N sequences against a background of B.

    values: (N, T) float64 per token, or (N, T, F) per step and feature; for a tuple of inputs, a tuple of such
    arrays, one per input (see :mod:`.inputs`).
    outputs: (N,) model outputs f(x) at the target; expected_value: mean f over the background,
    a float, or (N,) per input when the model computes constants from each input's ids (masks).
    residual: (N,) completeness error sum(values) - (f(x) - expected_value).
    """

    method: str
    values: np.ndarray
    outputs: np.ndarray
    expected_value: float | np.ndarray
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def residual(self) -> np.ndarray:
        return totals(self.values) - (self.outputs - self.expected_value)

    def base_value(self, k: int) -> float:
        """E f over the background for input k."""
        return float(np.broadcast_to(self.expected_value, self.outputs.shape)[k])


def totals(values: np.ndarray | tuple) -> np.ndarray:
    """Each input's sum of its values (N,): over every position and, for a tuple of inputs, over all of them."""
    parts = values if isinstance(values, tuple) else (values,)
    return sum(v.reshape(len(v), -1).sum(axis=1) for v in parts)


def check_ids(inputs: torch.Tensor, baselines: torch.Tensor, vocab_size: int) -> None:
    """One-line errors for token ids no explainer can handle."""
    for name, t in (("inputs", inputs), ("baselines", baselines)):
        if t.ndim != 2 or t.shape[0] == 0:
            raise UsageError(f"{name} must be token ids of shape (n, T) with n >= 1, got {tuple(t.shape)}")
        if t.dtype not in (torch.int64, torch.int32):
            raise UsageError(f"{name} must be integer token ids, got {t.dtype}")
        if int(t.min()) < 0 or int(t.max()) >= vocab_size:
            raise UsageError(f"{name} hold ids outside [0, {vocab_size}); were they encoded with this checkpoint's vocabulary?")
    if inputs.shape[1] != baselines.shape[1]:
        raise UsageError(f"inputs have {inputs.shape[1]} tokens but baselines {baselines.shape[1]}; encode both with the same maxlen")


def check_sequences(inputs: torch.Tensor, baselines: torch.Tensor) -> None:
    """One-line errors for float sequences (n, T, F) no explainer can handle."""
    for name, t in (("inputs", inputs), ("baselines", baselines)):
        if t.ndim != 3 or t.shape[0] == 0 or not t.is_floating_point():
            raise UsageError(f"{name} must be float sequences of shape (n, T, F) with n >= 1, "
                             f"got {tuple(t.shape)} {t.dtype}")
        if not torch.isfinite(t).all():
            raise UsageError(f"{name} hold NaN or infinite values")
    if inputs.shape[1:] != baselines.shape[1:]:
        raise UsageError(f"inputs are {tuple(inputs.shape[1:])} per sequence but baselines {tuple(baselines.shape[1:])}")


def check_extra(extra: tuple, n: int, device) -> tuple:
    """Further forward arguments on ``device``; a one-line error unless each tensor has one row per input (n)."""
    for a in extra:
        if isinstance(a, torch.Tensor) and (a.dim() == 0 or a.shape[0] != n):
            raise UsageError(f"additional_forward_args must have one row per input ({n}), got shape {tuple(a.shape)}")
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in extra)


def completeness_tolerance(dtype: torch.dtype) -> float:
    """The guard's relative tolerance for ``dtype`` (see :func:`guard`)."""
    return TOLERANCE.get(dtype, TOLERANCE[torch.float16])


# Relative to the output's scale max(1, |f(x)|, |E f|): float32 sums of a few thousand terms
# stay near 1e-6 (the seed model: 5e-8); an op without an exact rule costs 1e-3 and more.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def off_tolerance(computed: np.ndarray, own: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Where (bool, (n,)) an engine's f(x) or E f ``computed`` (n,) differs from the model's own ``own`` (n,) by more
    than the guard's tolerance, ``TOLERANCE[dtype] * max(1, |own|)``; NaN counts as off."""
    return ~(np.abs(computed - own) <= completeness_tolerance(dtype) * np.maximum(1.0, np.abs(own)))


def guard(method: str, values: np.ndarray, outputs: np.ndarray, expected, dtype: torch.dtype,
          check: bool = True, rows: np.ndarray | None = None) -> np.ndarray:
    """The completeness guard: sum(values) must equal f(x) - E f(background) for every input.

    values (n, T[, F]), or a tuple of such arrays (several inputs); outputs (n,); expected: a float or (n,). The residual of input k must
    be within ``TOLERANCE[dtype] * max(1, |f(x_k)|, |E f|)``. Returns each input's residual as a
    fraction of its tolerance; past 1 it raises :class:`~torch_imdb.errors.CompletenessError`
    in one line naming the input (its number in ``rows`` (n,) when given), unless ``check`` is False.
    """
    expected = np.broadcast_to(np.asarray(expected, dtype=np.float64), outputs.shape)
    total = totals(values)
    residual = total - (outputs - expected)
    scale = np.maximum(1.0, np.maximum(np.abs(outputs), np.abs(expected)))
    tol = completeness_tolerance(dtype)
    ratio = np.abs(residual) / (tol * scale)
    if check and not (ratio <= 1).all():  # NaN fails too
        k = int(np.argmax(np.where(np.isnan(ratio), np.inf, ratio)))
        name = k if rows is None else rows[k]
        raise CompletenessError(
            f"{method}: the attributions of input {name} sum to {total[k]:.6g} but f(x) - E f = "
            f"{outputs[k] - expected[k]:.6g} (residual {residual[k]:.3g}, tolerance {tol:g} x {scale[k]:.3g} in "
            f"{str(dtype).split('.')[-1]}): an op in the model likely has no exact rule (the covered ops: "
            "torch_imdb.explain.describe_rules()); pass check_completeness=False to get the values with their residuals")
    return ratio


def check_completeness(result: Attribution, dtype: torch.dtype, check: bool = True) -> Attribution:
    """:func:`guard` on an :class:`Attribution`; records the tolerance and the largest ratio in ``result.extra``."""
    ratio = guard(result.method, result.values, result.outputs, result.expected_value, dtype, check)
    result.extra["completeness_tolerance"] = completeness_tolerance(dtype)
    result.extra["completeness_ratio"] = float(np.nanmax(ratio)) if ratio.size else 0.0
    return result
