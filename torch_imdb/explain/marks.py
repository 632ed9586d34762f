"""What the transform's rule mode and the recurrent layers share, with no import of either: whether a tensor is
explained, the rule modes running (so that a recurrent module's outputs can tell the innermost one where their batch
is) and where in the user's code an op was written."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch


def explained(t: Any) -> bool:
    """Whether ``t`` carries the explained input's influence (grad on, and it requires grad)."""
    return isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled()


_MODES: list = []  # the transform's rule modes running, innermost last


def mark_batch(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Tell the running rule mode that ``t`` holds the batch on ``dim`` (a recurrent module's outputs: its layout
    says where); returns ``t``. Outside a rule mode it does nothing."""
    if _MODES and explained(t):
        _MODES[-1].remember(t, dim)
    return t


def batch_dim(t: torch.Tensor) -> int:
    """Where the running rule mode says ``t`` holds the batch (as carried, else as its sizes tell); 0 outside one."""
    return _MODES[-1].dim_of(t) if _MODES else 0


_OWN = (str(Path(torch.__file__).parent), str(Path(__file__).parent))


def user_location() -> str:
    """'file:line (code)' of the innermost frame outside torch and this package: where the user wrote the op."""
    for frame in reversed(traceback.extract_stack()[:-1]):
        if not frame.filename.startswith(_OWN):
            return f"{Path(frame.filename).name}:{frame.lineno} ({(frame.line or '').strip()})"
    return "an unknown place"
