"""Every numeric option of every command, walked: a value out of its range, not a number, NaN or huge is one
`error:` line and exit 2, and an accepted value is the number that was typed, inside the option's stated range."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math

import pytest
from conftest import COMMANDS, command_parser
from hypothesis import given, strategies as st

from torch_imdb.cli import int_list
from torch_imdb.errors import UsageError, run_cli

PROBES = ["-1", "0", "1", "3", "1.5", "10" + "0" * 30, "9" * 5000, "abc", "", "nan", "inf", "-inf", "1e3", "0x10"]


def numeric_options(command: str) -> list[argparse.Action]:
    return [a for a in command_parser(command)._actions if a.option_strings and a.type is not None]


def as_number(text: str, kind: type):
    try:
        return kind(text)
    except (ValueError, OverflowError):
        return None


def check(command: str, action: argparse.Action, text: str) -> None:
    """Parse ``OPTION TEXT``: one error line and exit 2, or the typed number inside the option's range."""
    parser = command_parser(command)
    option = action.option_strings[-1]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args([option, text])
    except SystemExit as exc:
        err = stderr.getvalue().strip()
        assert exc.code == 2 and err.startswith(f"error: argument {option}") and len(err.splitlines()) == 1, err
        assert len(err) < 300, err
        return
    value = getattr(args, action.dest)
    allowed = action.type.range
    if action.type is int_list:
        assert all(isinstance(v, int) and not allowed.error(v) for v in value) and value, (option, text, value)
        return
    assert allowed.error(value) is None and math.isfinite(value), (option, text, value)
    assert value == as_number(text, allowed.kind), (option, text, value)  # the number typed, not a clamp


@pytest.mark.parametrize("command", COMMANDS)
def test_every_numeric_option_has_a_bounded_type(command):
    """No option takes a bare int or float: each states its range, so a value out of it never reaches the code."""
    for action in numeric_options(command):
        assert action.type not in (int, float), f"{command} {action.option_strings[-1]} has no range"
        assert hasattr(action.type, "range"), f"{command} {action.option_strings[-1]}: {action.type}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_numeric_option_refuses_or_means_what_it_says(command):
    actions = [a for a in numeric_options(command) if hasattr(a.type, "range")]
    assert actions or command in ("torch_imdb.report", "torch_imdb.report_check", "benchmarks/faithfulness_summary.py")
    for action in actions:
        for text in PROBES:
            check(command, action, text)


@given(text=st.one_of(st.text(max_size=30), st.integers().map(str), st.floats().map(repr)))
def test_generated_values_for_the_shared_options(text):
    """The options every IMDB command shares (--seed, --background), and a list option, fed generated values."""
    for command, option in (("torch_imdb.explain", "--seed"), ("torch_imdb.words", "--background"),
                            ("benchmarks/explainer_speed.py", "--backgrounds"), ("torch_imdb.train", "--lr")):
        if text.startswith("-") and not text.lstrip("-")[:1].isdigit():
            continue  # argparse reads "-x" as another option, not a value
        action = next(a for a in numeric_options(command) if option in a.option_strings)
        check(command, action, text)


@pytest.mark.parametrize("command,argv", [
    ("torch_imdb.explain", ["--seed", "-1", "--text", "superb"]),  # a numpy traceback before, in --text and --input
    ("torch_imdb.explain", ["--seed", "-1", "--input", "reviews.txt"]),
    ("torch_imdb.explain", ["--reviews", "0"]), ("torch_imdb.explain", ["--chunk-reviews", "-5", "--all-test"]),
    ("torch_imdb.explain", ["--workers", "x"]), ("torch_imdb.train", ["--seed", "-1"]),
    ("torch_imdb.train", ["--maxlen", "1000000"]), ("torch_imdb.train", ["--lr", "nan"]),
    ("torch_imdb.train", ["--epochs", "1e3"]), ("torch_imdb.words", ["--min-count", "0"]),
])
def test_the_commands_answer_bad_options_in_one_line_before_any_work(command, argv, capsys):
    main = importlib.import_module(command + ".__main__" if command == "torch_imdb.explain" else command).main
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: argument {argv[0]}") and len(err.splitlines()) == 1, err


def test_the_command_lines_engines_are_the_registrys():
    """cli.ENGINES (torch-free, for --help) names exactly the engines make_engine builds, in the same order."""
    from torch_imdb.cli import ENGINES
    from torch_imdb.explain.engines import REGISTRY, make_engine
    from torch_imdb.model import ModelConfig, SentimentRNN

    assert ENGINES == tuple(REGISTRY)
    model = SentimentRNN(ModelConfig(vocab_size=10, embed_dim=4, hidden=3)).eval()
    built = {name: make_engine(name, model) for name in ENGINES}
    assert {name: type(engine).__name__ for name, engine in built.items()} == {
        "shap": "ShapDeepExplainer", "captum": "CaptumDeepLiftShap", "fast": "FastDeepShap",
        "fast-compiled": "FastDeepShap", "fused": "FusedDeepShap", "shapley": "ShapleySampling"}
    assert built["fast-compiled"].compiled and not built["fast"].compiled
    with pytest.raises(UsageError, match="unknown engine 'lime'; choose from shap, captum, fast, fast-compiled, fused, shapley"):
        make_engine("lime", model)
