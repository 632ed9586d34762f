"""Real files, hostile files: every reader of user files gives one line and exit 2, or a warning per bad row with
the rest explained; never a traceback, never NaN. Checkpoints from elsewhere are in test_checkpoint.py, killed
training runs in test_training.py."""

from __future__ import annotations

import csv
import io
import json
import os
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from torch_imdb.errors import UsageError, run_cli
from torch_imdb.explain.__main__ import main as explain_main
from torch_imdb.explain.texts import UNDECODABLE, read_texts, read_usable_texts, review_label
from torch_imdb.words import main as words_main


def write_csv(path, rows, header=("id", "text"), encoding="utf-8"):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def explain(ck, data, path, out, *extra):
    return explain_main(["--checkpoint", str(ck), "--data", str(data), "--input", str(path), "--out-dir", str(out),
                         "--background", "4", "--no-compile", *extra])


def one_line(capsys, argv_main, argv) -> str:
    """Run a command's main as the CLI does; it must exit 2 with one `error:` line on stderr."""
    assert run_cli(argv_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


# --- encodings ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_a_latin1_byte_is_replaced_with_a_warning_and_the_row_explained(tmp_path, fmt):
    path = tmp_path / f"r.{fmt}"
    lines = ["a superb film", "un café horrible", "boring"]
    if fmt == "txt":
        path.write_bytes("\n".join(lines).encode("latin-1"))
    elif fmt == "csv":
        write_csv(path, enumerate(lines), encoding="latin-1")
    else:
        path.write_bytes("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in lines).encode("latin-1"))
    got = read_texts(path)
    assert got.texts[1] == "un caf\ufffd horrible" and len(got.texts) == 3
    assert len(got.warnings) == 1 and got.warnings[0].startswith("row 1: bytes that are not utf-8")
    assert "--encoding" in got.warnings[0]
    exact = read_texts(path, encoding="latin-1")
    assert exact.texts[1] == "un café horrible" and not exact.warnings
    assert exact.fingerprint != got.fingerprint  # another encoding is another input: no resume across them


def test_a_latin1_file_is_explained_end_to_end_with_one_warning(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    path = tmp_path / "r.txt"
    path.write_bytes("w1 superb\nun café awful\nboring\n".encode("latin-1"))
    assert run_cli(explain_main, ["--checkpoint", str(ck), "--data", str(data), "--input", str(path),
                                  "--out-dir", str(tmp_path / "out"), "--background", "4", "--no-compile"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {path}: row 1: bytes that are not utf-8"), err
    with open(tmp_path / "out" / "tokens.csv", newline="", encoding="utf-8") as fh:
        assert sorted({int(r["row"]) for r in csv.DictReader(fh)}) == [0, 1, 2]


def test_an_excel_csv_with_a_byte_order_mark_keeps_its_ids(tmp_path):
    path = write_csv(tmp_path / "r.csv", [(41, "superb"), (42, "awful")], encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    got = read_texts(path)
    assert got.ids.tolist() == [41, 42] and got.texts == ["superb", "awful"]


def test_an_unknown_encoding_is_one_line(tmp_path):
    (tmp_path / "r.txt").write_text("superb\n")
    with pytest.raises(UsageError, match="--encoding 'klingon' is not an encoding"):
        read_texts(tmp_path / "r.txt", encoding="klingon")


# --- sizes, ids and labels -------------------------------------------------------------------------------------

def test_a_csv_field_over_128_kib_is_read(tmp_path):
    long_review = " ".join(["superb"] * 40_000)  # 280 KB in one field
    got = read_texts(write_csv(tmp_path / "r.csv", [(1, long_review), (2, "awful")]))
    assert got.texts[0] == long_review and got.ids.tolist() == [1, 2]


@pytest.mark.parametrize("bad_id", [str(2**70), "1e300", "-1e19", "inf", "nan", "1.5"])
def test_ids_outside_int64_or_not_integers_are_one_line(tmp_path, bad_id):
    path = write_csv(tmp_path / "r.csv", [(1, "superb"), (bad_id, "awful")])
    with pytest.raises(UsageError, match=r"r.csv row 1: id .* (out of range|not an integer)") as err:
        read_texts(path)
    assert "\n" not in str(err.value)


def test_ids_at_the_edges_of_int64_are_kept_exactly(tmp_path):
    path = write_csv(tmp_path / "r.csv", [(2**63 - 1, "superb"), (-(2**63), "awful")])
    assert read_texts(path).ids.tolist() == [2**63 - 1, -(2**63)]


@pytest.mark.parametrize("label", ["300", "-5", "1.5", "positive", "128"])
def test_labels_out_of_range_are_one_line_not_wrapped(tmp_path, label):
    path = write_csv(tmp_path / "r.csv", [(1, "superb", 1), (2, "awful", label)], header=("id", "text", "label"))
    with pytest.raises(UsageError, match=r"row 1: label .* is not an integer in \[0, 127\]"):
        read_texts(path)


@pytest.mark.parametrize("value,expected", [(None, -1), ("", -1), (float("nan"), -1), (np.float64("nan"), -1),
                                            (np.float32(1.0), 1), ("0", 0), (127, 127), (np.int64(-1), -1)])
def test_one_label_rule_for_both_runners(value, expected):
    """review_label is what the local reader and the Ray actors call: NaN is unknown (-1) in both."""
    assert review_label(value, "here") == expected


def test_a_nan_label_in_parquet_is_unknown_not_a_refusal(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["superb", "awful"], "label": [1.0, float("nan")]}), path)
    assert read_texts(path).labels.tolist() == [1, -1]


# --- broken files and folders ----------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"PAR1 not really", b"PAR1" + bytes(range(256)) * 4 + b"PAR1"])
def test_a_damaged_parquet_input_is_one_line(tmp_path, content):
    (tmp_path / "r.parquet").write_bytes(content)
    with pytest.raises(UsageError, match=r"r.parquet: not a readable parquet file") as err:
        read_texts(tmp_path / "r.parquet")
    assert "\n" not in str(err.value)


def test_a_truncated_parquet_input_is_one_line(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"id": [1, 2], "text": ["superb", "awful"]}), path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(UsageError, match="not a readable parquet file"):
        read_texts(path)


def test_a_folder_of_txt_files_is_numbered_in_file_name_order(tmp_path):
    (tmp_path / "b.txt").write_text("awful\nboring\n")
    (tmp_path / "a.txt").write_text("superb\n\nwonderful\n")
    got = read_texts(tmp_path)
    assert got.texts == ["superb", "wonderful", "awful", "boring"]
    assert got.ids.tolist() == [0, 2, 3, 4]  # positions over a.txt then b.txt, the blank line included
    assert got.skipped == ["a.txt row 1: no text, skipped"]


def test_a_csv_that_is_not_csv_is_one_line(tmp_path):
    (tmp_path / "r.csv").write_text('id,text\n1,"superb\n2,"awful""x"y\n')
    try:
        got = read_texts(tmp_path / "r.csv")
    except UsageError as err:
        assert "\n" not in str(err)
    else:  # the csv module reads it as one long quoted field: that is a reading, not a crash
        assert got.rows >= 1


# --- paths that loop ----------------------------------------------------------------------------------------------

def looping_folder(root):
    """d/a.txt, d/sub/b.txt, and links back: d/self -> d, d/sub/up -> d, d/sub/a-again.txt -> d/a.txt."""
    d = root / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("superb\nawful\n")
    (d / "sub" / "b.txt").write_text("boring\n")
    (d / "self").symlink_to(d)
    (d / "sub" / "up").symlink_to(d)
    (d / "sub" / "a-again.txt").symlink_to(d / "a.txt")
    return d


def test_a_recursive_glob_over_links_back_walks_each_folder_once(tmp_path):
    """The hang guard, counted not timed: Python's glob follows d/self -> d without end; this walk lists the two
    real folders once each and reads each real file once, with a line for the second path to a.txt."""
    from torch_imdb.explain.texts import walk_glob

    d = looping_folder(tmp_path)
    notes = []
    walk = walk_glob(d, ("**", "*.txt"), notes)
    assert walk.folders == 2
    assert [p.relative_to(d).as_posix() for p in walk.files] == ["a.txt", "sub/b.txt"]
    assert len(notes) == 1 and "a-again.txt is the same file as" in notes[0]
    assert notes[0].endswith("a.txt (a link): read once")


def test_a_looping_folder_is_explained_once_with_a_warning(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    d = looping_folder(tmp_path)
    got = read_texts(str(d / "**" / "*.txt"))
    assert got.texts == ["superb", "awful", "boring"] and got.ids.tolist() == [0, 1, 2]
    assert explain(ck, data, str(d / "**" / "*.txt"), tmp_path / "out") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a-again.txt is the same file as" in err[0], err
    assert read_texts(d).texts == ["superb", "awful"]  # a folder: its own files, a.txt once


def test_a_link_to_a_file_in_a_folder_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("superb\n")
    (tmp_path / "b.txt").symlink_to(tmp_path / "a.txt")
    got = read_texts(tmp_path)
    assert got.texts == ["superb"] and len(got.warnings) == 1 and "b.txt is the same file as" in got.warnings[0]


# --- text that parses into something else -----------------------------------------------------------------------

def test_an_unterminated_quote_in_a_csv_is_refused_naming_its_line(tmp_path):
    """It merged the rows after it into one review (1 row instead of 3, exit 0, no warning)."""
    (tmp_path / "r.csv").write_text('id,text\n1,superb\n2,"awful\n3,boring\n4,dull\n')
    with pytest.raises(UsageError, match=r"r.csv line 3: a quoted field opens here and is never closed"):
        read_texts(tmp_path / "r.csv")


def test_a_quote_closed_rows_later_is_warned_with_the_rows_it_swallowed(tmp_path):
    (tmp_path / "r.csv").write_text('id,text\n1,"superb\n2,awful\n3,boring\n4,"dull, flat"\n')
    got = read_texts(tmp_path / "r.csv")
    assert len(got.texts) == 1 and len(got.warnings) == 1
    assert got.warnings[0].startswith("row 0: its text runs over 4 lines, 3 of which read as rows of their own")


def test_a_review_over_several_lines_is_no_warning(tmp_path):
    write_csv(tmp_path / "r.csv", [(1, "superb\nreally\nwonderful, truly"), (2, "awful")])
    got = read_texts(tmp_path / "r.csv")
    assert got.texts == ["superb\nreally\nwonderful, truly", "awful"] and not got.warnings


@pytest.mark.parametrize("encoding,bom,fix", [("utf-16", True, "utf-16"), ("utf-16-le", False, "utf-16-le"),
                                              ("utf-16-be", False, "utf-16-be"), ("utf-32", True, "utf-32")])
@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl"])
def test_utf16_read_as_utf8_is_refused_with_the_encoding_to_give(tmp_path, encoding, bom, fix, fmt, capsys):
    """It became all-<unk> reviews with one warning suggesting latin-1; a CSV's error printed the header's NULs."""
    path = tmp_path / f"r.{fmt}"
    lines = ["a superb film", "awful, boring"]
    text = {"txt": "\n".join(lines), "csv": "id,text\n1,a superb film\n2,\"awful, boring\"\n",
            "jsonl": "\n".join(json.dumps({"text": t}) for t in lines)}[fmt]
    path.write_bytes(text.encode(encoding))
    unmarked = (b"a\x00", b"\x00a", b"i\x00", b"\x00i", b"{\x00", b"\x00{")  # a, i, { then NUL, or NUL first
    assert path.read_bytes()[:2] in ((b"\xff\xfe", b"\xfe\xff") if bom else unmarked)
    with pytest.raises(UsageError, match=f"give --encoding {fix}$") as err:
        read_texts(path)
    assert "\x00" not in str(err.value) and "\n" not in str(err.value)
    got = read_texts(path, encoding=fix)
    assert got.texts == lines and not got.warnings and not got.skipped


def test_a_utf8_byte_order_mark_read_as_latin1_is_refused(tmp_path):
    write_csv(tmp_path / "r.csv", [(1, "café")], encoding="utf-8-sig")
    with pytest.raises(UsageError, match="byte-order mark of UTF-8, but is read as iso8859-1; give --encoding utf-8"):
        read_texts(tmp_path / "r.csv", encoding="latin-1")


def test_a_column_name_with_control_characters_is_escaped(tmp_path):
    (tmp_path / "r.csv").write_bytes(b"id,te\x00xt\x1b[31m\n1,superb\n")
    with pytest.raises(UsageError, match=r"columns: id, te\\x00xt\\x1b\[31m\)") as err:
        read_texts(tmp_path / "r.csv")
    assert "\x00" not in str(err.value) and "\x1b" not in str(err.value)


# --- a column present in some rows only --------------------------------------------------------------------------

@pytest.mark.parametrize("records,first,lacking", [
    ([{"text": "superb"}, {"id": 7, "text": "awful"}], "row 1", "row 0"),  # an id first seen after row 0
    ([{"id": 7, "text": "superb"}, {"text": "awful"}], "row 0", "row 1"),
    ([{"id": 7, "text": "superb"}, {"id": None, "text": "awful"}], "row 0", "row 1"),
])
def test_ids_in_some_json_lines_only_are_one_line(tmp_path, records, first, lacking):
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    with pytest.raises(UsageError, match=f"{first} has an `id` but {lacking} has none; give every row an integer"):
        read_texts(tmp_path / "r.jsonl")


def test_an_empty_id_cell_in_a_csv_is_the_same_rule(tmp_path):
    write_csv(tmp_path / "r.csv", [(1, "superb"), ("", "awful")])
    with pytest.raises(UsageError, match="row 0 has an `id` but row 1 has none"):
        read_texts(tmp_path / "r.csv")


def test_rows_without_text_do_not_count_for_the_id_rule(tmp_path):
    (tmp_path / "r.jsonl").write_text("\n".join([json.dumps({"id": 3, "text": "superb"}), json.dumps({"text": ""}),
                                                 "not json"]))
    got = read_texts(tmp_path / "r.jsonl")
    assert got.ids.tolist() == [3] and len(got.skipped) == 2


# --- resumes and output folders ----------------------------------------------------------------------------------

class Killed(Exception):
    pass


def run_killed_after_first_chunk(monkeypatch, ck, data, path, out):
    """Run --input and stop it after its first chunk is written, as a kill would."""
    import torch_imdb.explain.corpus as corpus

    real = corpus.write_part
    calls = []

    def write_then_die(target, table):
        if calls:
            raise Killed
        calls.append(target)
        real(target, table)

    monkeypatch.setattr(corpus, "write_part", write_then_die)
    with pytest.raises(Killed):
        explain(ck, data, path, out, "--chunk-reviews", "2")
    monkeypatch.setattr(corpus, "write_part", real)
    assert [p.name for p in out.glob("chunk-*.parquet")] == ["chunk-00000.parquet"]


def test_editing_a_review_between_a_kill_and_its_resume_is_refused(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    ck, data = tiny_checkpoint
    path = write_csv(tmp_path / "r.csv", [(1, "w1 superb"), (2, "w2 awful"), (3, "wonderful"), (4, "boring")])
    out = tmp_path / "out"
    run_killed_after_first_chunk(monkeypatch, ck, data, path, out)
    write_csv(path, [(1, "w1 dreadful"), (2, "w2 awful"), (3, "wonderful"), (4, "boring")])  # same ids and rows
    manifest = (out / "manifest.json").read_bytes()
    err = one_line(capsys, explain_main, ["--checkpoint", str(ck), "--data", str(data), "--input", str(path),
                                          "--out-dir", str(out), "--background", "4", "--no-compile",
                                          "--chunk-reviews", "2"])
    assert "the input changed since the run" in err
    assert (out / "manifest.json").read_bytes() == manifest  # a refused resume rewrites nothing
    write_csv(path, [(1, "w1 superb"), (2, "w2 awful"), (3, "wonderful"), (4, "boring")])  # the original again
    assert explain(ck, data, path, out, "--chunk-reviews", "2") == 0
    assert "resuming: 1 of 2 chunks" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_the_temporary_files_of_killed_writes_go_with_the_next_run(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """A run killed in the middle of writing its manifest, tokens.csv or word_summary.csv leaves a temporary file;
    the resume removes each one (not the file of a writer still running)."""
    from test_io import dead_pid

    ck, data = tiny_checkpoint
    path = write_csv(tmp_path / "r.csv", [(1, "w1 superb"), (2, "w2 awful"), (3, "wonderful"), (4, "boring")])
    out = tmp_path / "out"
    run_killed_after_first_chunk(monkeypatch, ck, data, path, out)
    left = [out / f".{name}.{dead_pid()}-q1w2.tmp" for name in ("manifest.json", "tokens.csv", "word_summary.csv")]
    left.append(out / ".manifest.json.x7k2m9p0.tmp")  # the name an older version gave it
    live = out / f".tokens.csv.{os.getppid()}-live.tmp"
    for stale in [*left, live]:
        stale.write_text("half a file")
    assert explain(ck, data, path, out, "--chunk-reviews", "2") == 0
    assert sorted(p.name for p in out.glob(".*.tmp")) == [live.name]
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_a_refused_resume_leaves_a_finished_manifest_as_it_was(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    path = write_csv(tmp_path / "r.csv", [(1, "w1 superb"), (2, "w2 awful")])
    out = tmp_path / "out"
    assert explain(ck, data, path, out) == 0
    before = (out / "manifest.json").read_bytes()
    err = one_line(capsys, explain_main, ["--checkpoint", str(ck), "--data", str(data), "--input", str(path),
                                          "--out-dir", str(out), "--background", "5", "--no-compile"])
    assert "other settings (background, background_train_rows differ)" in err
    assert (out / "manifest.json").read_bytes() == before and json.loads(before)["complete"] is True


def test_a_truncated_chunk_in_an_output_folder_is_one_line(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    path = write_csv(tmp_path / "r.csv", [(1, "w1 superb"), (2, "w2 awful"), (3, "boring")])
    out = tmp_path / "out"
    assert explain(ck, data, path, out, "--chunk-reviews", "2") == 0
    chunk = out / "chunk-00001.parquet"
    chunk.write_bytes(chunk.read_bytes()[:-40])
    base = ["--checkpoint", str(ck), "--data", str(data), "--input", str(path), "--out-dir", str(out),
            "--background", "4", "--no-compile", "--chunk-reviews", "2"]
    err = one_line(capsys, explain_main, base)
    assert "chunk-00001.parquet is damaged" in err and "delete it" in err
    err = one_line(capsys, words_main, ["--checkpoint", str(ck), "--data", str(data), "--attributions", str(out),
                                        "--out", str(tmp_path / "words")])
    assert "chunk-00001.parquet is damaged" in err
    chunk.unlink()
    assert explain(ck, data, path, out, "--chunk-reviews", "2") == 0  # the deleted chunk is recomputed


def test_a_chunk_of_another_run_is_refused(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    a = write_csv(tmp_path / "a.csv", [(1, "w1 superb"), (2, "w2 awful"), (3, "boring")])
    b = write_csv(tmp_path / "b.csv", [(1, "w1 awful"), (2, "w2 superb"), (3, "wonderful")])
    assert explain(ck, data, a, tmp_path / "A", "--chunk-reviews", "2") == 0
    assert explain(ck, data, b, tmp_path / "B", "--chunk-reviews", "2") == 0
    (tmp_path / "A" / "chunk-00001.parquet").write_bytes((tmp_path / "B" / "chunk-00001.parquet").read_bytes())
    err = one_line(capsys, words_main, ["--checkpoint", str(ck), "--data", str(data), "--attributions",
                                        str(tmp_path / "A"), "--out", str(tmp_path / "words")])
    assert "belongs to another run" in err


def test_words_refuses_an_attributions_folder_it_cannot_use(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    ck, data = tiny_checkpoint
    base = ["--checkpoint", str(ck), "--data", str(data), "--out", str(tmp_path / "words"), "--attributions"]
    assert "is not a folder" in one_line(capsys, words_main, base + [str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    assert "holds no manifest.json" in one_line(capsys, words_main, base + [str(tmp_path / "empty")])
    path = write_csv(tmp_path / "r.csv", [(1, "w1 superb"), (2, "w2 awful"), (3, "wonderful"), (4, "boring")])
    run_killed_after_first_chunk(monkeypatch, ck, data, path, tmp_path / "cut")
    assert "is an unfinished run" in one_line(capsys, words_main, base + [str(tmp_path / "cut")])
    assert not (tmp_path / "words").exists()  # nothing was replaced by a sample


# --- fuzz: random bytes, truncations and mixed encodings, in every format ----------------------------------------

def valid_file(rng: random.Random, fmt: str) -> bytes:
    words = ["superb", "awful", "café", "naïve", "w1", "日本", "\u2028", "\x00", '"', ",", "\\", "{", "\r"]
    rows = [(k, " ".join(rng.choice(words) for _ in range(rng.randint(0, 6))), rng.choice([0, 1, ""]))
            for k in range(rng.randint(1, 6))]
    if fmt == "txt":
        return "\n".join(r[1] for r in rows).encode("utf-8")
    if fmt == "jsonl":
        return "\n".join(json.dumps({"id": r[0], "text": r[1], "label": r[2] or None}) for r in rows).encode()
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([("id", "text", "label"), *rows])
        return buf.getvalue().encode("utf-8")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows]}), sink)
    return sink.getvalue().to_pybytes()


def mutate(rng: random.Random, data: bytes) -> bytes:
    kind = rng.choice(["truncate", "flip", "insert", "latin1", "random", "bom", "nul"])
    if kind == "truncate":
        return data[: rng.randint(0, len(data))]
    if kind == "flip" and data:
        pos = rng.randrange(len(data))
        return data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1:]
    if kind == "insert":
        pos = rng.randint(0, len(data))
        return data[:pos] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[pos:]
    if kind == "latin1":
        return data.replace("é".encode(), b"\xe9").replace("ï".encode(), b"\xef")
    if kind == "random":
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    return data.replace(b"w1", b"w\x001")


FUZZ_SEED = 20261129


@pytest.mark.parametrize("fmt", ["txt", "csv", "jsonl", "parquet"])
def test_fuzzed_files_give_one_line_or_warnings_never_a_traceback(tmp_path, fmt):
    rng = random.Random(f"{FUZZ_SEED}-{fmt}")
    outcomes = {"read": 0, "refused": 0}
    for case in range(150):
        path = tmp_path / f"case{case}.{fmt}"
        path.write_bytes(mutate(rng, valid_file(rng, fmt)))
        warned = []
        try:
            got = read_usable_texts(path, warned.append)
        except UsageError as err:
            assert "\n" not in str(err), (case, str(err))
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        assert len(got.ids) == len(got.texts) == len(got.labels) and got.texts
        assert all(isinstance(t, str) and t.strip() and not UNDECODABLE.search(t) for t in got.texts)
        assert len(warned) == len(got.skipped) + len(got.warnings) and all("\n" not in w for w in warned)
        assert got.rows == len(got.texts) + len(got.skipped)
    assert outcomes["read"] > 10, outcomes  # the fuzzer must reach the rows, not only the refusals
    if fmt != "txt":
        assert outcomes["refused"] > 0, outcomes


def test_fuzzed_files_end_to_end_explain_or_exit_2(tiny_checkpoint, tmp_path, capsys):
    """A few fuzzed files through the whole command: exit 0 with finite values and a warning per bad row, or exit 2."""
    import math

    ck, data = tiny_checkpoint
    rng = random.Random(FUZZ_SEED)
    exits = []
    for case in range(12):
        fmt = ["txt", "csv", "jsonl", "parquet"][case % 4]
        path = tmp_path / f"case{case}.{fmt}"
        path.write_bytes(mutate(rng, valid_file(rng, fmt)))
        out = tmp_path / f"out{case}"
        code = run_cli(explain_main, ["--checkpoint", str(ck), "--data", str(data), "--input", str(path),
                                      "--out-dir", str(out), "--background", "4", "--no-compile"])
        captured = capsys.readouterr()
        exits.append(code)
        assert code in (0, 2), captured.err
        assert "Traceback" not in captured.err
        if code == 2:
            assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: ")
            continue
        with open(out / "tokens.csv", newline="", encoding="utf-8") as fh:
            values = [float(r["value"]) for r in csv.DictReader(fh)]
        assert values and all(math.isfinite(v) for v in values)
    assert 0 in exits, exits
