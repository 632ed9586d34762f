"""Property-based tests of the --input readers (hypothesis, derandomized, a bounded number of examples; see conftest).

The property is always the same: a file gives its rows exactly (the expected count, ids and texts), or rows with
a one-line warning for each one repaired or skipped, or one `error:` line. Never a traceback, a hang, or rows
merged, duplicated or renumbered without a word.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from torch_imdb.errors import UsageError, run_cli
from torch_imdb.explain.texts import UNDECODABLE, read_usable_texts

BREAKS = "\r\n"
# Any text a review may hold, surrogates aside (they cannot be encoded); a .txt review cannot hold a line break.
REVIEW = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
LINE_REVIEW = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=BREAKS), max_size=30)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]
FORMATS = ["txt", "csv", "jsonl", "parquet"]


def file_bytes(fmt: str, reviews: list[str], ids: list[int] | None, encoding: str) -> bytes:
    """The reviews written as a user's tool writes that format (csv.writer, json.dumps, pyarrow)."""
    if fmt == "parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({**({"id": ids} if ids else {}), "text": reviews}), sink)
        return sink.getvalue().to_pybytes()
    if fmt == "txt":
        text = "".join(r + "\n" for r in reviews)
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "text"] if ids else ["text"])
        w.writerows([(i, r) for i, r in zip(ids, reviews)] if ids else [(r,) for r in reviews])
        text = buf.getvalue()
    else:
        text = "".join(json.dumps({**({"id": i} if ids else {}), "text": r}, ensure_ascii=False) + "\n"
                       for i, r in zip(ids or [None] * len(reviews), reviews))
    return text.encode(encoding)


def read(data: bytes, fmt: str, encoding: str = "utf-8"):
    """read_usable_texts on a file holding ``data``: (rows, warnings) or the one-line error's text."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"r.{fmt}"
        path.write_bytes(data)
        warned: list[str] = []
        try:
            return read_usable_texts(path, warned.append, encoding), warned
        except UsageError as err:
            message = str(err)
            assert "\n" not in message and "\x00" not in message and len(message) < 600, message
            return message, None


def well_formed(got, warned) -> None:
    assert len(got.ids) == len(got.texts) == len(got.labels) > 0
    assert len(set(got.ids.tolist())) == len(got.ids)
    assert all(t.strip() and not UNDECODABLE.search(t) for t in got.texts)
    assert got.rows == len(got.texts) + len(got.skipped)
    assert len(warned) == len(got.skipped) + len(got.warnings) and all("\n" not in w for w in warned)


@st.composite
def inputs(draw):
    fmt = draw(st.sampled_from(FORMATS))
    reviews = draw(st.lists(LINE_REVIEW if fmt == "txt" else REVIEW, min_size=1, max_size=6))
    with_ids = fmt != "txt" and draw(st.booleans())
    ids = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=len(reviews), max_size=len(reviews),
                        unique=True)) if with_ids else None
    encoding = "utf-8" if fmt == "parquet" else draw(st.sampled_from(ENCODINGS))
    return fmt, reviews, ids, encoding


@given(inputs())
def test_a_well_formed_file_gives_its_rows_exactly(case):
    fmt, reviews, ids, encoding = case
    try:
        data = file_bytes(fmt, reviews, ids, encoding)
    except UnicodeEncodeError:
        assume(False)  # text this encoding cannot hold
    assume(any(r.strip() for r in reviews))
    got, warned = read(data, fmt, encoding)
    assert not isinstance(got, str), got
    kept = [k for k, r in enumerate(reviews) if r.strip()]
    assert got.texts == [reviews[k] for k in kept]
    assert got.ids.tolist() == ([ids[k] for k in kept] if ids else kept)
    assert got.rows == len(reviews) and not got.warnings
    well_formed(got, warned)


MUTATIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=6)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.sampled_from([b'"', b"\x00", b"\r", b"\n", b",", b"{", b"\xff"])),
    st.tuples(st.just("prefix"), st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff"])),
    st.tuples(st.just("replace"), st.binary(max_size=200)),
)


def mutated(data: bytes, mutation) -> bytes:
    kind, *args = mutation
    if kind == "truncate":
        return data[: int(args[0] * len(data))]
    if kind == "insert":
        at = int(args[0] * len(data))
        return data[:at] + args[1] + data[at:]
    if kind == "prefix":
        return args[0] + data
    return args[0]


@given(inputs(), MUTATIONS)
def test_a_damaged_file_is_read_with_warnings_or_refused_in_one_line(case, mutation):
    fmt, reviews, ids, encoding = case
    try:
        data = mutated(file_bytes(fmt, reviews, ids, encoding), mutation)
    except UnicodeEncodeError:
        assume(False)
    got, warned = read(data, fmt, encoding)
    if not isinstance(got, str):
        well_formed(got, warned)


WORD = st.text("abcdefgh ,", min_size=1, max_size=12).filter(lambda t: t.strip(" ,"))


@given(st.lists(WORD, min_size=2, max_size=8), st.data())
def test_a_quote_left_open_never_merges_rows_without_a_word(reviews, data):
    """A stray quote at the start of one review's field: refused, or every row read, or a warning that names the
    rows the field swallowed."""
    ids = list(range(1, len(reviews) + 1))
    text = file_bytes("csv", reviews, ids, "utf-8").decode()
    lines = text.splitlines(keepends=True)
    j = data.draw(st.integers(1, len(reviews)))  # a row's line (line 0 is the header)
    head, _, rest = lines[j].partition(",")
    lines[j] = f'{head},"{rest}' if not rest.startswith('"') else lines[j]
    got, warned = read("".join(lines).encode(), "csv")
    if isinstance(got, str):
        assert "never closed" in got or "not valid CSV" in got, got
        return
    well_formed(got, warned)
    assert got.rows == len(reviews) or any("read as rows of their own" in w for w in warned), (got.texts, warned)


@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(inputs(), st.one_of(st.none(), MUTATIONS))
def test_the_command_explains_a_generated_file_or_exits_2(tiny_checkpoint, tmp_path, case, mutation):
    """Through the whole command: exit 0 with finite values for every row read, or exit 2 with one line."""
    from torch_imdb.explain.__main__ import main

    ck, data = tiny_checkpoint
    fmt, reviews, ids, encoding = case
    try:
        content = file_bytes(fmt, reviews, ids, encoding)
    except UnicodeEncodeError:
        assume(False)
    content = mutated(content, mutation) if mutation else content
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    (folder / f"r.{fmt}").write_bytes(content)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = run_cli(main, ["--checkpoint", str(ck), "--data", str(data), "--input", str(folder / f"r.{fmt}"),
                              "--out-dir", str(folder / "out"), "--background", "4", "--no-compile",
                              "--encoding", encoding])
    lines = err.getvalue().strip().splitlines()
    assert code in (0, 2) and all(line.startswith("warning: ") for line in lines[:-1]), lines
    if code == 2:  # one error line (after the warnings of the rows it read, when none had text)
        assert lines[-1].startswith("error: "), lines
        return
    assert not lines or lines[-1].startswith("warning: "), lines
    values = pq.read_table(folder / "out" / "chunk-00000.parquet").to_pydict()
    assert all(math.isfinite(v) for row in values["values"] for v in row)
    assert np.isfinite(values["output"]).all()
