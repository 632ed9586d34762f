"""Explain the reviews in a user's files: read, encode, attribute with the fast engine, summarise by word.

``python -m torch_imdb.explain --input PATH`` reads one review per line (.txt,
lines broken at \\n, \\r\\n or \\r), or the ``text`` column of CSV, parquet or
JSON-lines files; PATH is a file, a folder or a glob (``**`` for any depth). Each
real file is read once: a second path to it (a link) is left out with a warning,
and a glob never walks a folder twice, so links back to a parent cannot loop. A
row without usable text gets a one-line warning naming the row and is skipped;
the rest run. Attributions stream to resumable parquet chunks (see
:mod:`.corpus`), then ``tokens.csv`` (one row per position) and
``word_summary.csv`` (the attributions grouped by word) are written next to them.

Each review keeps one id through every engine: the integer ``id`` of its row when
the rows have one (then every row with text must have one, in every file), else
its 0-based position in the input, the files taken in name order. A ``label``
column, when present, is kept (an integer in [0, 127]; empty, null or NaN for
unknown).

Text files (.txt, .csv, .jsonl) are decoded as ``--encoding`` (UTF-8 by default;
a byte-order mark is dropped). A file whose first bytes say it is in another
encoding (another byte-order mark, or UTF-16's NUL between every other byte) is
refused with the ``--encoding`` to give. Bytes that do not decode are replaced by
U+FFFD with a warning naming the row, and the row is explained. A CSV quote that
is never closed is refused naming its line; a field that runs over lines that
read as rows of their own is read, with a warning. Every other problem of a file
is one line naming the file (and the row): a missing column, an id that is not an
integer of 64 bits, a label out of range, a damaged parquet file.
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import hashlib
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from torch_imdb.checkpoint import Checkpoint
from torch_imdb.errors import UsageError, shown
from torch_imdb.io import atomic_path

FORMATS = (".txt", ".csv", ".parquet", ".jsonl", ".json")
UNDECODABLE = re.compile("[\udc00-\udcff]")  # what ESCAPE makes of bytes the encoding cannot decode
ESCAPE = "torch_imdb.escape"


def _escape(exc: UnicodeError) -> tuple[str, int]:
    """Like surrogateescape, for every byte a decoder rejects: ASCII ones too (a UTF-16 file cut after an odd byte
    ends in one), which surrogateescape cannot take and raises on."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return "".join(chr(0xDC00 + b) for b in exc.object[exc.start:exc.end]), exc.end


codecs.register_error(ESCAPE, _escape)
ID_RANGE = (-(2**63), 2**63 - 1)  # ids are stored as int64
LABEL_RANGE = (0, 127)  # labels are stored as int8; -1 means unknown


def input_files(spec: str | Path, notes: list[str] | None = None) -> list[Path]:
    """The files ``--input`` names: a file, every readable file in a folder (hidden ones aside, as a glob's ``*``
    leaves them), or a glob's matches, sorted.

    All must share one format; a one-line error names what is wrong. Each real file
    is read once: one reached again through a link is left out with a line in
    ``notes``, and a glob's walk never enters a folder it has walked already (a link
    back to a parent cannot make it loop).
    """
    spec = str(spec)
    path = Path(spec)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [f for f in walk_glob(path, ("*",), notes).files if f.suffix.lower() in FORMATS]
        if not files:
            raise UsageError(f"--input {spec}: the folder holds no {', '.join(FORMATS)} file")
    elif any(ch in spec for ch in "*?["):
        parts = path.parts
        first = next(k for k, part in enumerate(parts) if any(ch in part for ch in "*?["))
        files = walk_glob(Path(*parts[:first]) if first else Path("."), parts[first:], notes).files
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


@dataclass
class Walk:
    """What :func:`walk_glob` found: the files (each real file once, sorted) and how many folders it listed."""

    files: list[Path]
    folders: int


def walk_glob(base: Path, pattern: tuple[str, ...], notes: list[str] | None = None) -> Walk:
    """The files under ``base`` whose path relative to it matches ``pattern`` (glob parts; ``**`` is any number of
    folders; a wildcard does not match a name that starts with a dot), as ``glob.glob(recursive=True)`` finds them,
    with links followed, but each folder listed once and each real file kept once (the first path found, a folder's
    files before its subfolders'; ``notes`` gets a line for each other path)."""
    seen_folders: set[tuple[int, int]] = set()
    first_path: dict[tuple[int, int], Path] = {}
    files, folders, stack = [], 0, [(base, ())]
    while stack:
        folder, rel = stack.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen_folders:
                continue  # walked already: a link back up, or a second way into the same folder
            seen_folders.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # an unreadable folder holds nothing glob would return either
        folders += 1
        below = []
        for entry in entries:
            names = (*rel, entry.name)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
                info = entry.stat() if is_file else None
            except OSError:
                continue
            if is_dir and _could_match(pattern, names):
                below.append((Path(entry.path), names))
            elif is_file and _matches(pattern, names):
                key = (info.st_dev, info.st_ino)
                if key in first_path:
                    if notes is not None:
                        notes.append(f"{entry.path} is the same file as {first_path[key]} (a link): read once")
                    continue
                first_path[key] = Path(entry.path)
                files.append(Path(entry.path))
        stack.extend(reversed(below))  # the subfolders next, in name order
    return Walk(sorted(files, key=str), folders)


def _name_matches(part: str, name: str) -> bool:
    return (part.startswith(".") or not name.startswith(".")) and fnmatch.fnmatchcase(name, part)


def _matches(pattern: tuple[str, ...], names: tuple[str, ...]) -> bool:
    if not pattern:
        return not names
    if pattern[0] == "**":
        return _matches(pattern[1:], names) or (bool(names) and not names[0].startswith(".")
                                                and _matches(pattern, names[1:]))
    return bool(names) and _name_matches(pattern[0], names[0]) and _matches(pattern[1:], names[1:])


def _could_match(pattern: tuple[str, ...], names: tuple[str, ...]) -> bool:
    """Whether a path below the folder ``names`` can match ``pattern``."""
    for k, name in enumerate(names):
        if k >= len(pattern):
            return False
        if pattern[k] == "**":
            return not any(n.startswith(".") for n in names[k:])
        if not _name_matches(pattern[k], name):
            return False
    return len(pattern) > len(names)


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


# Longest first: UTF-32 LE's mark starts as UTF-16 LE's.
BOMS = [(codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")]


def check_bytes(path: Path, encoding: str) -> None:
    """A one-line error when the file's first bytes say it is in another encoding than ``encoding``: a byte-order
    mark of another one, or UTF-16 without one (every other byte NUL), which would decode into rows of noise."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise UsageError(f"--input {path}: cannot read it ({exc.strerror or exc})") from None
    encoding = check_encoding(encoding)
    family = next((f for f in ("utf-8", "utf-16", "utf-32") if encoding.startswith(f)), encoding)
    for bom, name in BOMS:
        if head.startswith(bom):
            if family != name:
                raise UsageError(f"--input {path} starts with the byte-order mark of {name.upper()}, but is read as "
                                 f"{encoding}; give --encoding {name}")
            return
    if encoding in ("utf-16", "utf-32") and len(head) >= 2:
        raise UsageError(f"--input {path} does not start with a byte-order mark, which --encoding {encoding} needs "
                         f"to know the byte order; give --encoding {encoding}-le or {encoding}-be")
    pairs = len(head) // 2
    if pairs >= 2 and family not in ("utf-16", "utf-32"):
        odd = head[1:2 * pairs:2].count(0) / pairs
        even = head[0:2 * pairs:2].count(0) / pairs
        if max(odd, even) > 0.4 and min(odd, even) < 0.05:
            order = "le" if odd > even else "be"
            raise UsageError(f"--input {path}: every other byte is NUL, so it is UTF-16 text ({order.upper()}, "
                             f"without a byte-order mark), not {encoding}; give --encoding utf-16-{order}")


def open_text(path: Path, encoding: str = "utf-8"):
    """The file as a text stream in ``encoding``: lines as written (CSV needs newline=""), undecodable bytes kept as
    lone surrogates (see UNDECODABLE). A byte-order mark, when there is one, is the first character."""
    try:
        return open(path, encoding=encoding, errors=ESCAPE, newline="")
    except OSError as exc:
        raise UsageError(f"--input {path}: cannot read it ({exc.strerror or exc})") from None


def without_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file decoded as ``encoding``, byte-order mark dropped (see :func:`open_text`)."""
    with open_text(path, encoding) as fh:
        return without_bom(fh.read())


LINE_BREAK = re.compile(r"\r\n|\r|\n")


def lines_of(text: str) -> list[str]:
    """A .txt or .jsonl file's lines: split at line breaks (\\n, \\r\\n, \\r) only, as an editor shows them. Not
    str.splitlines, which also splits at U+2028, form feeds and the like: one line of JSON may hold them raw."""
    lines = LINE_BREAK.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


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
    """The header and the rows of a CSV file; a one-line error naming the line for a malformed file.

    A quote that opens a field and is never closed would make every later line part
    of that one field (one review where the file has many): refused, naming the line
    where it opens. Other quoting slips (``"a"b``) are read as the csv module reads
    them by default.
    """
    with _WideCSV():
        try:
            return _csv_rows(path, encoding, strict=True)
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                raise UsageError(f"--input {path} line {exc.args[1]}: a quoted field opens here and is never closed, "
                                 "so every line after it would be one review; close the quote (a quote inside a "
                                 'field is written twice: "")') from None
        try:
            return _csv_rows(path, encoding, strict=False)
        except csv.Error as exc:
            raise UsageError(f"--input {path} line {exc.args[1]}: not valid CSV ({exc.args[0]})") from None


def _csv_rows(path: Path, encoding: str, strict: bool) -> tuple[list[str], list[dict]]:
    with open_text(path, encoding) as fh:
        reader = csv.DictReader(fh, strict=strict)
        start = 1
        try:
            names = [without_bom(name) for name in reader.fieldnames or []]
            reader.fieldnames = names
            start = reader.line_num + 1
            rows = []
            for row in reader:
                rows.append(row)
                start = reader.line_num + 1
            return names, rows
        except csv.Error as exc:
            raise csv.Error(str(exc), start) from None


def swallowed_rows(text: str, width: int, with_id: bool) -> int:
    """How many of a CSV field's later lines read as rows of their own (``width`` fields, an integer first when the
    file has ids): the sign of a quote opened in one row and closed in another."""
    lines = text.splitlines()[1:]
    with _WideCSV():
        parsed = list(csv.reader(lines))
    return sum(len(fields) == width and (not with_id or fields[0].strip().lstrip("+-").isdigit())
               for fields in parsed)


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
        return [{"text": line} for line in lines_of(read_text(path, encoding))]
    if suffix in (".csv", ".parquet"):
        names, rows = csv_rows(path, encoding) if suffix == ".csv" else (columns_of(path), None)
        if "text" not in names:
            listed = ", ".join(shown(name) for name in names[:20])
            raise UsageError(f"--input {path} has no `text` column (columns: {listed})")
        if rows is not None:
            return rows
        return read_parquet(path, columns=[c for c in ("id", "text", "label") if c in names]).to_pylist()
    records = []
    for line in lines_of(read_text(path, encoding)):
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


class _Row(NamedTuple):
    """A row with text: its file, its number there, how messages name it, its position in the input, its text
    (repaired) and its record."""

    file: Path
    k: int
    tag: str
    position: int
    text: str
    record: dict


def read_texts(spec: str | Path, encoding: str = "utf-8") -> InputRows:
    """Every row of the input with usable text (see the module docstring for ids, labels and decoding)."""
    encoding = check_encoding(encoding)
    out = InputRows(np.zeros(0, np.int64), [], np.zeros(0, np.int64))
    files = input_files(spec, out.warnings)
    out.fingerprint = input_fingerprint(files, encoding)
    rows: list[_Row] = []  # every row with text
    for f in files:
        if f.suffix.lower() != ".parquet":
            check_bytes(f, encoding)
        width = len(columns_of(f, encoding))
        try:
            records = _records(f, encoding)
        except UnicodeError as exc:  # what the decoders raise beyond bad bytes (ESCAPE takes those)
            raise UsageError(f"--input {f} cannot be read as {encoding} ({shown(str(exc), 80)}); give the file's "
                             "--encoding") from None
        for k, rec in enumerate(records):
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
            if f.suffix.lower() == ".csv" and width > 1 and "\n" in text:
                swallowed = swallowed_rows(text, width, "id" in rec)
                if swallowed:
                    out.warnings.append(f"{tag}: its text runs over {text.count(chr(10)) + 1} lines, {swallowed} of "
                                        "which read as rows of their own (a quote closed rows later?); check the "
                                        "file's quoting if they are separate reviews")
            rows.append(_Row(f, k, tag, position, text, rec))
    with_id = [row for row in rows if row.record.get("id") not in (None, "")]
    if with_id and len(with_id) < len(rows):
        lacking = next(row for row in rows if row.record.get("id") in (None, ""))
        raise UsageError(f"--input {spec}: {with_id[0].tag} has an `id` but {lacking.tag} has none; give every row "
                         "an integer `id`, or none (reviews are then numbered in the order they are read)")
    ids = [review_id(row.record["id"], f"--input {row.file} row {row.k}") if with_id else row.position
           for row in rows]
    out.texts = [row.text for row in rows]
    out.labels = np.array([review_label(row.record.get("label"), f"--input {row.file} row {row.k}") for row in rows],
                          dtype=np.int64)
    out.ids = np.array(ids, dtype=np.int64)
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
