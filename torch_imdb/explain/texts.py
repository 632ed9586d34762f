"""Explain the reviews in a user's files: read, encode, attribute with the fast engine, summarise by word.

``python -m torch_imdb.explain --input PATH`` reads one review per line (.txt),
or the ``text`` column of CSV, parquet or JSON-lines files; PATH is a file, a
folder or a glob. A row without usable text gets a one-line warning naming the
row and is skipped; the rest run. Attributions stream to resumable parquet
chunks (see :mod:`.corpus`), then ``tokens.csv`` (one row per position) and
``word_summary.csv`` (the attributions grouped by word) are written next to them.

Each review keeps one id through every engine: the file's integer ``id`` column
when it has one, else its 0-based row in the file (which needs a single file:
rows of several files would collide). A ``label`` column, when present, is kept.
"""

from __future__ import annotations

import csv
import glob
import json
from pathlib import Path

import numpy as np

from torch_imdb.checkpoint import Checkpoint
from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_path

FORMATS = (".txt", ".csv", ".parquet", ".jsonl", ".json")


def input_files(spec: str | Path) -> list[Path]:
    """The files ``--input`` names: a file, every readable file in a folder, or a glob's matches, sorted.

    All must share one format; a one-line error names what is wrong.
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FORMATS)
        if not files:
            raise UsageError(f"--input {spec}: the folder holds no {', '.join(FORMATS)} file")
    elif any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise UsageError(f"--input {spec}: the pattern matches no file")
    else:
        raise UsageError(f"--input {spec} is not a file, a folder or a glob that matches files")
    for f in files:
        if f.suffix.lower() not in FORMATS:
            raise UsageError(f"--input {f}: unknown format {f.suffix!r}; use one of {', '.join(FORMATS)}")
    kinds = {".jsonl" if f.suffix.lower() == ".json" else f.suffix.lower() for f in files}
    if len(kinds) > 1:
        raise UsageError(f"--input {spec} mixes formats ({', '.join(sorted(kinds))}); give files of one format")
    return files


def columns_of(path: Path) -> list[str]:
    """The column names of an input file, read from its header (CSV), schema (parquet) or first object (JSON lines)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return ["text"]
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            return next(csv.reader(fh), [])
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError:
                    return []
                return list(obj) if isinstance(obj, dict) else []
    return []


def _records(path: Path) -> list:
    """One dict per row with `text` (and `id`, `label` when the file has them); a ValueError for a broken row."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [{"text": line} for line in path.read_text(encoding="utf-8").splitlines()]
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "text" not in (reader.fieldnames or []):
                raise UsageError(f"{path} has no `text` column (columns: {', '.join(reader.fieldnames or [])})")
            return list(reader)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise UsageError(f"{path} has no `text` column (columns: {', '.join(table.column_names)})")
        return table.select([c for c in ("id", "text", "label") if c in table.column_names]).to_pylist()
    records = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            obj = json.loads(line) if line.strip() else {}
            records.append(obj if isinstance(obj, dict) else ValueError("not a JSON object with a `text` field"))
        except ValueError:
            records.append(ValueError("not a JSON object with a `text` field"))
    return records


def review_id(value, where: str) -> int:
    """An input's `id` as an int; a one-line error when it is not an integer."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)  # exact, also beyond float64's 2**53
    try:
        as_float = float(value)
        if as_float != int(as_float):
            raise ValueError
        return int(as_float)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"{where}: id {value!r} is not an integer; the `id` column must hold integer ids") from None


def read_texts(spec: str | Path) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(ids, texts, labels, problems) for every row of the input with usable text.

    ids: the `id` column, else the 0-based row in the (single) file; labels: the
    `label` column, else -1; problems: one line per skipped row.
    """
    files = input_files(spec)
    with_id = ["id" in columns_of(f) for f in files]
    if len(files) > 1 and not all(with_id):
        raise UsageError(f"--input {spec} spans {len(files)} files and not all have an `id` column; add an integer "
                         "`id` column so that every review keeps one id across files")
    use_id = all(with_id)
    ids, texts, labels, problems = [], [], [], []
    for f in files:
        for k, rec in enumerate(_records(f)):
            tag = f"row {k}" if len(files) == 1 else f"{f.name} row {k}"
            if isinstance(rec, ValueError):
                problems.append(f"{tag}: {rec}")
                continue
            text = rec.get("text")
            if not isinstance(text, str) or not text.strip():
                problems.append(f"{tag}: no text, skipped")
                continue
            ids.append(review_id(rec.get("id"), f"{f} row {k}") if use_id else k)
            texts.append(text)
            label = rec.get("label")
            labels.append(-1 if label in (None, "") else int(review_id(label, f"{f} row {k} label")))
    ids_arr = np.array(ids, dtype=np.int64)
    unique, counts = np.unique(ids_arr, return_counts=True)
    if (counts > 1).any():
        raise UsageError(f"--input {spec}: id {unique[counts > 1][0]} appears {counts[counts > 1][0]} times; "
                         "ids must be unique")
    return ids_arr, texts, np.array(labels, dtype=np.int64), problems


def read_usable_texts(spec: str | Path, log) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """:func:`read_texts`, with a warning line per skipped row through ``log``; a one-line error when no row has text."""
    ids, texts, labels, problems = read_texts(spec)
    for line in problems:
        log(f"warning: {spec}: {line}")
    if not texts:
        raise UsageError(f"--input {spec} holds no row with text; nothing to explain")
    return ids, texts, labels, problems


def write_token_table(path: str | Path, ckpt: Checkpoint, got: dict[str, np.ndarray]) -> int:
    """One CSV row per position: row, output, position, word, token_id, value. Returns the number of rows.

    Padding positions are kept: the model reads them, they carry attribution, and
    without them a review's values would not add up to its output minus E[f].
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["row", "output", "position", "word", "token_id", "value"])
        for row, output, ids, values in zip(got["row"], got["output"], got["ids"], got["values"]):
            for t in range(len(ids)):
                w.writerow([int(row), f"{output:.6g}", int(t), ckpt.vocab.word(int(ids[t])), int(ids[t]), f"{values[t]:.6g}"])
                n += 1
    return n
