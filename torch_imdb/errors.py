"""One error type for everything a user can get wrong, and the CLI wrapper that prints it."""

from __future__ import annotations

import sys
from typing import Callable


def shown(text: str, limit: int = 40) -> str:
    """Text from a user (an option's value, a file's column name) as a one-line message quotes it: at most
    ``limit`` characters, control characters escaped."""
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class UsageError(Exception):
    """Bad input from the user (paths, options, text): printed as one line, never a traceback."""


class CompletenessError(UsageError):
    """Attributions that do not add up to f(x) - E f(background) within the stated tolerance: never a result."""


class ShapeRefusal(UsageError):
    """The fast engine's own recurrence and heads do not take this model's shape (two recurrent modules, a front
    end, an initial state, a head it would not follow): its general path, the transform, does."""


class OutputMismatch(ShapeRefusal, CompletenessError):
    """The fast engine's own path computed another f(x) or E f than the model: a shape it does not follow."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's ``main`` and turn :class:`UsageError` into ``error: ...`` and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
