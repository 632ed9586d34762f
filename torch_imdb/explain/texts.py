"""Explain the reviews in a user's file: read, encode, attribute with the fast engine, summarise by word.

``python -m torch_imdb.explain --input FILE`` reads one review per line (.txt),
or the ``text`` column of a CSV, parquet or JSON-lines file. A row without
usable text gets a one-line warning naming the row and is skipped; the rest
run. Attributions stream to resumable parquet chunks (see :mod:`.corpus`), then
``tokens.csv`` (one row per position) and ``word_summary.csv`` (the
attributions grouped by word) are written next to them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from torch_imdb.checkpoint import Checkpoint
from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_path

FORMATS = (".txt", ".csv", ".parquet", ".jsonl", ".json")


def _column(path: Path) -> list:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "text" not in (reader.fieldnames or []):
                raise UsageError(f"{path} has no `text` column (columns: {', '.join(reader.fieldnames or [])})")
            return [row["text"] for row in reader]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise UsageError(f"{path} has no `text` column (columns: {', '.join(table.column_names)})")
        return table["text"].to_pylist()
    texts = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            texts.append(json.loads(line).get("text") if line.strip() else None)
        except (ValueError, AttributeError):
            texts.append(ValueError(f"row {k}: not a JSON object with a `text` field"))
    return texts


def read_texts(path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(rows, texts, problems): the 0-based row of each usable text in the file, the texts, one line per skipped row."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--input {path} is not a file")
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--input {path}: unknown format {path.suffix!r}; use one of {', '.join(FORMATS)}")
    rows, texts, problems = [], [], []
    for k, text in enumerate(_column(path)):
        if isinstance(text, ValueError):
            problems.append(str(text))
        elif not isinstance(text, str) or not text.strip():
            problems.append(f"row {k}: no text, skipped")
        else:
            rows.append(k)
            texts.append(text)
    return np.array(rows, dtype=np.int64), texts, problems


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
