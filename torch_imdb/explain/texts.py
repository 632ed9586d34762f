"""Explain the reviews in a user's files: read, encode, attribute with the fast engine, summarise by word.

``python -m torch_imdb.explain --input PATH`` reads one review per line (.txt),
or the ``text`` column of CSV, parquet or JSON-lines files; PATH is a file, a
folder or a glob. A row without usable text gets a one-line warning naming the
row and is skipped; the rest run. Attributions stream to resumable parquet
chunks (see :mod:`.corpus`), then ``tokens.csv`` (one row per position) and
``word_summary.csv`` (the attributions grouped by word) are written next to them.

Each review keeps one id through every engine: the file's integer ``id`` column
when it has one (every file must then have one), else its 0-based position in
the input, the files taken in name order. A ``label`` column, when present, is
kept (an integer in [0, 127]; empty, null or NaN for unknown).

Text files (.txt, .csv, .jsonl) are decoded as ``--encoding`` (UTF-8 by default;
a byte-order mark is dropped). Bytes that do not decode are replaced by U+FFFD
with a warning naming the row, and the row is explained. Every other problem of
a file is one line naming the file (and the row): a missing column, an id that
is not an integer of 64 bits, a label out of range, a damaged parquet file.
"""

from __future__ import annotations

import codecs
import csv
import glob
import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from torch_imdb.checkpoint import Checkpoint
from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_path

FORMATS = (".txt", ".csv", ".parquet", ".jsonl", ".json")
UNDECODABLE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bytes the encoding cannot decode
ID_RANGE = (-(2**63), 2**63 - 1)  # ids are stored as int64
LABEL_RANGE = (0, 127)  # labels are stored as int8; -1 means unknown


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


def check_encoding(encoding: str) -> str:
    """``encoding``'s canonical name; a one-line error when Python does not know it."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UsageError(f"--encoding {encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1, cp1252)") from None


def input_fingerprint(files: list[Path], encoding: str = "utf-8") -> str:
    """SHA-256 of the input's file names and bytes (and the encoding they are read with): a resume must match it."""
    h = hashlib.sha256(check_encoding(encoding).encode())
    for f in files:
        h.update(f"|{f.name}|{f.stat().st_size}|".encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


def open_text(path: Path, encoding: str = "utf-8"):
    """The file as a text stream in ``encoding``: lines as written (CSV needs newline=""), undecodable bytes kept as
    lone surrogates (see UNDECODABLE). A byte-order mark, when there is one, is the first character."""
    try:
        return open(path, encoding=encoding, errors="surrogateescape", newline="")
    except OSError as exc:
        raise UsageError(f"--input {path}: cannot read it ({exc.strerror or exc})") from None


def without_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file decoded as ``encoding``, byte-order mark dropped (see :func:`open_text`)."""
    with open_text(path, encoding) as fh:
        return without_bom(fh.read())


def read_parquet(path: Path, columns: list[str] | None = None):
    """A parquet file's table (or only its schema, with ``columns=[]``); a one-line error for a damaged file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path) if columns == [] else pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--input {path}: not a readable parquet file ({reason}); re-export it or remove it") from None


class _WideCSV:
    """Lift the csv module's 128 KiB field limit for one read (a long review is one field)."""

    def __enter__(self):
        self.old = csv.field_size_limit(sys.maxsize)

    def __exit__(self, *exc):
        csv.field_size_limit(self.old)


def csv_rows(path: Path, encoding: str) -> tuple[list[str], list[dict]]:
    """The header and the rows of a CSV file; a one-line error naming the line for a malformed file."""
    with open_text(path, encoding) as fh, _WideCSV():
        reader = csv.DictReader(fh)
        try:
            names = [without_bom(name) for name in reader.fieldnames or []]
            reader.fieldnames = names
            return names, list(reader)
        except csv.Error as exc:
            raise UsageError(f"--input {path} line {reader.line_num}: not valid CSV ({exc})") from None


def columns_of(path: Path, encoding: str = "utf-8") -> list[str]:
    """The column names of an input file, read from its header (CSV), schema (parquet) or first object (JSON lines)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return ["text"]
    if suffix == ".parquet":
        return list(read_parquet(path, columns=[]).names)
    with open_text(path, encoding) as fh:  # the header, or the first object: not the whole file
        if suffix == ".csv":
            with _WideCSV():
                return [without_bom(name) for name in next(csv.reader(fh), [])]
        for line in fh:
            if line.strip():
                try:
                    obj = json.loads(without_bom(line))
                except ValueError:
                    return []
                return list(obj) if isinstance(obj, dict) else []
    return []


def _records(path: Path, encoding: str) -> list:
    """One dict per row with `text` (and `id`, `label` when the file has them); a ValueError for a broken row."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [{"text": line} for line in read_text(path, encoding).splitlines()]
    if suffix == ".csv":
        names, rows = csv_rows(path, encoding)
        if "text" not in names:
            raise UsageError(f"--input {path} has no `text` column (columns: {', '.join(names)})")
        return rows
    if suffix == ".parquet":
        names = columns_of(path)
        if "text" not in names:
            raise UsageError(f"--input {path} has no `text` column (columns: {', '.join(names)})")
        return read_parquet(path, columns=[c for c in ("id", "text", "label") if c in names]).to_pylist()
    records = []
    for line in read_text(path, encoding).splitlines():
        try:
            obj = json.loads(line) if line.strip() else {}
            records.append(obj if isinstance(obj, dict) else ValueError("not a JSON object with a `text` field"))
        except (ValueError, RecursionError):
            records.append(ValueError("not a JSON object with a `text` field"))
    return records


def review_id(value, where: str) -> int:
    """An input's `id` as an int64; a one-line error when it is not an integer in range."""
    number = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)  # exact, also beyond float64's 2**53
    elif isinstance(value, (str, float, np.floating)) and not isinstance(value, bool):
        try:
            number = int(value) if isinstance(value, str) and value.strip().lstrip("+-").isdigit() else None
            if number is None:
                as_float = float(value)
                number = int(as_float) if math.isfinite(as_float) and as_float == int(as_float) else None
        except (TypeError, ValueError, OverflowError):
            number = None
    if number is None:
        raise UsageError(f"{where}: id {value!r} is not an integer; the `id` column must hold integer ids")
    if not ID_RANGE[0] <= number <= ID_RANGE[1]:
        raise UsageError(f"{where}: id {value!r} is out of range; ids must fit in 64 bits (|id| < 2**63)")
    return number


def review_label(value, where: str) -> int:
    """An input's `label`: -1 when unknown (empty, null, NaN), else an integer in LABEL_RANGE; one-line errors."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return -1
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return -1
    try:
        label = review_id(value, where)
    except UsageError:
        label = None
    if label is None or not (label == -1 or LABEL_RANGE[0] <= label <= LABEL_RANGE[1]):
        raise UsageError(f"{where}: label {value!r} is not an integer in [{LABEL_RANGE[0]}, {LABEL_RANGE[1]}]; "
                         "leave it empty when unknown")
    return label


@dataclass
class InputRows:
    """The usable rows of an input: ids (N,) int64, texts, labels (N,) int64 (-1: unknown), and what was noticed.

    ``skipped`` and ``warnings`` are one line each (a skipped row is not explained;
    a warned row is); ``rows`` counts every row read, ``fingerprint`` identifies
    the input's bytes (see :func:`input_fingerprint`).
    """

    ids: np.ndarray
    texts: list[str]
    labels: np.ndarray
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: int = 0
    fingerprint: str = ""


def read_texts(spec: str | Path, encoding: str = "utf-8") -> InputRows:
    """Every row of the input with usable text (see the module docstring for ids, labels and decoding)."""
    encoding = check_encoding(encoding)
    files = input_files(spec)
    with_id = ["id" in columns_of(f, encoding) for f in files]
    if any(with_id) and not all(with_id):
        lacking = next(f for f, has in zip(files, with_id) if not has)
        raise UsageError(f"--input {spec}: {lacking.name} has no `id` column but other files do; give every file "
                         "an integer `id` column, or none (reviews are then numbered in file-name order)")
    use_id = all(with_id)
    out = InputRows(np.zeros(0, np.int64), [], np.zeros(0, np.int64), fingerprint=input_fingerprint(files, encoding))
    ids, labels = [], []
    for f in files:
        for k, rec in enumerate(_records(f, encoding)):
            tag = f"row {k}" if len(files) == 1 else f"{f.name} row {k}"
            position, out.rows = out.rows, out.rows + 1
            if isinstance(rec, ValueError):
                out.skipped.append(f"{tag}: {rec}")
                continue
            text = rec.get("text")
            if not isinstance(text, str) or not text.strip():
                out.skipped.append(f"{tag}: no text, skipped")
                continue
            if UNDECODABLE.search(text):
                text = UNDECODABLE.sub("\ufffd", text)
                out.warnings.append(f"{tag}: bytes that are not {encoding} were replaced by U+FFFD (explained anyway; "
                                    "give --encoding, e.g. latin-1, if the file has another encoding)")
            ids.append(review_id(rec.get("id"), f"--input {f} row {k}") if use_id else position)
            out.texts.append(text)
            labels.append(review_label(rec.get("label"), f"--input {f} row {k}"))
    out.ids, out.labels = np.array(ids, dtype=np.int64), np.array(labels, dtype=np.int64)
    unique, counts = np.unique(out.ids, return_counts=True)
    if (counts > 1).any():
        raise UsageError(f"--input {spec}: id {unique[counts > 1][0]} appears {counts[counts > 1][0]} times; "
                         "ids must be unique")
    return out


def read_usable_texts(spec: str | Path, log, encoding: str = "utf-8") -> InputRows:
    """:func:`read_texts`, with a warning line per skipped or repaired row through ``log``; a one-line error when no
    row has text."""
    got = read_texts(spec, encoding)
    for line in got.skipped + got.warnings:
        log(f"warning: {spec}: {line}")
    if not got.texts:
        raise UsageError(f"--input {spec} holds no row with text; nothing to explain")
    return got


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
