"""Reading --input: files, folders and globs; review ids from an `id` column or the row; one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from torch_imdb.errors import UsageError
from torch_imdb.explain.texts import input_files, read_texts


def write_parquet(path, **columns):
    pq.write_table(pa.table(columns), path)
    return path


def test_ids_and_labels_come_from_the_file_when_it_has_them(tmp_path):
    path = write_parquet(tmp_path / "r.parquet", id=[40, 7, 12], text=["good film", " ", "bad film"], label=[1, 0, 0])
    got = read_texts(path)
    np.testing.assert_array_equal(got.ids, [40, 12])
    assert got.texts == ["good film", "bad film"] and got.labels.tolist() == [1, 0]
    assert got.skipped == ["row 1: no text, skipped"] and got.rows == 3 and not got.warnings


def test_without_ids_a_review_is_numbered_by_its_row(tmp_path):
    (tmp_path / "r.jsonl").write_text("\n".join([json.dumps({"text": "a"}), "not json", json.dumps({"text": "b"})]))
    got = read_texts(tmp_path / "r.jsonl")
    assert got.ids.tolist() == [0, 2] and got.texts == ["a", "b"] and got.labels.tolist() == [-1, -1]
    assert got.skipped == ["row 1: not a JSON object with a `text` field"]


def test_a_folder_or_a_glob_reads_every_file_in_order(tmp_path):
    for k in range(3):
        with open(tmp_path / f"part{k}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "text"])
            w.writerows([(10 * k, f"review {k}a"), (10 * k + 1, f"review {k}b")])
    (tmp_path / "notes.md").write_text("not an input")
    assert [p.name for p in input_files(tmp_path)] == ["part0.csv", "part1.csv", "part2.csv"]
    got = read_texts(str(tmp_path / "part[12].csv"))
    assert got.ids.tolist() == [10, 11, 20, 21] and got.texts[0] == "review 1a"
    assert read_texts(tmp_path).ids.tolist() == [0, 1, 10, 11, 20, 21]


@pytest.mark.parametrize("setup, message", [
    (lambda d: [write_parquet(d / "a.parquet", text=["x"]), write_parquet(d / "b.parquet", id=[1], text=["y"])],
     "b.parquet row 0 has an `id` but a.parquet row 0 has none"),
    (lambda d: [write_parquet(d / "a.parquet", id=[1, 1], text=["x", "y"])], "id 1 appears 2 times"),
    (lambda d: [write_parquet(d / "a.parquet", id=["one"], text=["x"])], "not an integer"),
    (lambda d: [write_parquet(d / "a.parquet", id=[1], text=["x"]), (d / "b.txt").write_text("y\n")], "mixes formats"),
    (lambda d: [], "holds no .txt"),
])
def test_bad_inputs_get_one_line(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(UsageError, match=message) as err:
        read_texts(tmp_path)
    assert "\n" not in str(err.value)


def test_a_pattern_that_matches_nothing(tmp_path):
    with pytest.raises(UsageError, match="matches no file"):
        read_texts(str(tmp_path / "*.parquet"))


def test_large_integer_ids_stay_exact(tmp_path):
    big = 2**60 + 1  # not representable as a float64
    path = write_parquet(tmp_path / "r.parquet", id=[big], text=["good film"])
    assert read_texts(path).ids.tolist() == [big]
