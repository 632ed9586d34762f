"""Atomic writes clean up after killed writers of the same file; JSON read back is one line when it is damaged."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from torch_imdb.errors import UsageError
from torch_imdb.io import MAX_JSON_DEPTH, atomic_write_text, json_depth, parse_json, read_json


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_write_removes_what_killed_writes_of_the_same_file_left(tmp_path):
    killed = tmp_path / f".m.json.{dead_pid()}-k3j2.tmp"
    older = tmp_path / ".m.json.a8x_2kd0.tmp"  # the names of versions without a process number
    live = tmp_path / f".m.json.{os.getppid()}-live.tmp"  # a writer still running (the test runner's parent)
    other = tmp_path / f".m.json.bak.{dead_pid()}-k3j2.tmp"  # another file's: m.json.bak
    for path in (killed, older, live, other):
        path.write_text("half")
    atomic_write_text(tmp_path / "m.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "m.json"])


@pytest.mark.parametrize("text,match", [
    ("", "is unreadable \\(not JSON"), ('{"a": 1', "is unreadable \\(not JSON"),
    ("[1]", "holds a JSON list, not an object"), ('"text"', "holds a JSON str, not an object"),
    ("[" * 100_000 + "]" * 100_000, "nests deeper than 64 levels"),
    ('{"a": ' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1), "nests deeper than 64 levels"),
])
def test_damaged_json_is_one_line_with_the_fix(text, match):
    with pytest.raises(UsageError, match=match) as err:
        parse_json(text, "results/x.json", "rerun the command")
    assert str(err.value).startswith("results/x.json ") and str(err.value).endswith("; rerun the command")
    assert "\n" not in str(err.value)


def test_json_as_deep_as_the_limit_is_read():
    text = '{"a": ' * (MAX_JSON_DEPTH - 1) + "[1]" + "}" * (MAX_JSON_DEPTH - 1)
    assert json_depth(parse_json(text, "x", "fix")) == MAX_JSON_DEPTH


def test_read_json_names_a_missing_a_binary_and_a_too_large_file(tmp_path):
    with pytest.raises(UsageError, match="missing.json is unreadable \\(No such file"):
        read_json(tmp_path / "missing.json", "fix")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe{\x00}\x00")
    with pytest.raises(UsageError, match="b.json is unreadable \\(not UTF-8 text\\); fix"):
        read_json(tmp_path / "b.json", "fix")
    (tmp_path / "big.json").write_text("[" + "1, " * 100 + "1]")
    with pytest.raises(UsageError, match="big.json is larger than 100 bytes"):
        read_json(tmp_path / "big.json", "fix", kind=list, max_bytes=100)
    assert read_json(tmp_path / "big.json", "fix", kind=list) == [1] * 101
