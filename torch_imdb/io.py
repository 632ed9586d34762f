"""Atomic, durable artifact writes: write a temporary file beside the target, fsync, rename, fsync the folder.

An interrupted run can leave a stray ``.NAME.PID-XXXX.tmp`` file, never a
half-written artifact, and the next write of NAME removes it (a temporary file
of a process that is still running stays); the fsyncs make the new file survive
a crash of the machine (not only of the process) once the rename is done.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from torch_imdb.errors import UsageError

MAX_JSON_DEPTH = 64  # deeper than any file this project writes; a deeper file is crafted, and refused in one line
MAX_JSON_BYTES = 256 << 20


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; artifacts get the usual permissions
    try:
        yield Path(tmp)
        _fsync(tmp)  # the data is on disk before the name points at it
        os.replace(tmp, target)
        _fsync(target.parent)  # and so is the rename
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_orphans(target: Path) -> list[Path]:
    """Remove the temporary files that killed writes of ``target`` left beside it: those of processes no longer
    running (and those of any name without a process number, left by older versions). Returns what it removed."""
    removed = []
    prefix = f".{target.name}."
    for tmp in target.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        rest = tmp.name[len(prefix):-len(".tmp")]
        owner = rest.split("-", 1)[0]
        if "." in rest or (owner.isdigit() and _running(int(owner))):
            continue  # another target's (mkstemp's names have no dot), or a live writer's
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a number we cannot ask about: leave its file alone
    return True


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(target: str | Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def parse_json(text: str, where: str, fix: str, kind: type = dict, what: str = "an object") -> Any:
    """``text`` parsed as JSON holding a ``kind``, nested at most MAX_JSON_DEPTH deep; else one UsageError line:
    ``{where} ...; {fix}``."""
    too_deep = UsageError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels, which no file of torch_imdb does; {fix}")
    try:
        obj = json.loads(text)
    except RecursionError:  # the parser's own limit, far deeper than ours
        raise too_deep from None
    except ValueError as exc:
        raise UsageError(f"{where} is unreadable (not JSON: {str(exc).splitlines()[0][:120]}); {fix}") from None
    if json_depth(obj) > MAX_JSON_DEPTH:
        raise too_deep
    if not isinstance(obj, kind):
        raise UsageError(f"{where} holds a JSON {type(obj).__name__}, not {what}; {fix}")
    return obj


def read_json(path: str | Path, fix: str, kind: type = dict, what: str = "an object", where: str | None = None,
              max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file a command reads back (see :func:`parse_json`): every failure (missing, unreadable, too large, not
    UTF-8, not JSON, too deep, not a ``kind``) is one UsageError line naming the file and ``fix``."""
    where = where or str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise UsageError(f"{where} is unreadable ({exc.strerror or type(exc).__name__}); {fix}") from None
    if len(data) > max_bytes:
        raise UsageError(f"{where} is larger than {max_bytes:,} bytes, more than this file can be; {fix}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where} is unreadable (not UTF-8 text); {fix}") from None
    return parse_json(text, where, fix, kind, what)


def json_depth(obj: Any) -> int:
    """How deeply lists and dicts nest in ``obj`` (0 for a scalar), walked without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # no need to walk further down than the limit
            stack.extend((child, depth + 1) for child in children)
    return deepest


def atomic_save_npy(target: str | Path, array) -> None:
    import numpy as np

    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def atomic_torch_save(target: str | Path, obj: Any) -> None:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def atomic_savefig(target: str | Path, fig, **kwargs) -> None:
    """Save a matplotlib figure atomically (format taken from the target's suffix)."""
    target = Path(target)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=target.suffix.lstrip("."), **kwargs)


def remove_stale_temps(folder: str | Path, *names: str) -> None:
    """Remove the temporary files that killed writes of ``names`` (globs such as ``model-*.pt``) left in ``folder``.

    Only for a folder one process writes at a time: a concurrent writer's
    temporary file would go too.
    """
    for name in names:
        for stale in Path(folder).glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
