"""Atomic, durable artifact writes: write a temporary file beside the target, fsync, rename, fsync the folder.

An interrupted run can leave a stray ``*.tmp`` file, never a half-written
artifact; the fsyncs make the new file survive a crash of the machine (not only
of the process) once the rename is done.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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
