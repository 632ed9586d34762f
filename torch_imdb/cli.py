"""The options the commands share, defined once as argparse parent parsers."""

from __future__ import annotations

import argparse
from typing import Callable

from torch_imdb.config import MAX_REVIEWS, RANGES, Range
from torch_imdb.errors import shown

# The engines `--engines` names; their registry (make_engine) is in torch_imdb.explain.compare. The DeepSHAP engines
# give the same values; shapley samples the interventional Shapley values of the game DeepSHAP approximates.
DEEPSHAP_ENGINES = ("shap", "captum", "fast", "fast-compiled", "fused")
ENGINES = (*DEEPSHAP_ENGINES, "shapley")


MAX_COUNT = 1_000_000  # a bound for counts with no natural one (chunk sizes, repeats, workers)


class Parser(argparse.ArgumentParser):
    """argparse's parser with a one-line error (``error: MESSAGE; see --help``, exit 2) instead of a usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see --help\n")


def bounded(allowed: Range) -> Callable[[str], int | float]:
    """An argparse type for a value in ``allowed``, or argparse's one-line error naming the range.

    ``.range`` keeps the range, for the tests' walk over every parser."""

    def parse(text: str) -> int | float:
        try:
            value = allowed.kind(text)
        except (ValueError, OverflowError):
            value = None
        if value is None or allowed.error(value):
            kind = "an integer" if allowed.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind} in {allowed}, got '{shown(text)}'")
        return value

    parse.__name__ = f"{allowed.kind.__name__} in {allowed}"
    parse.range = allowed
    return parse


def count(low: int = 1, high: int = MAX_COUNT) -> Callable[[str], int]:
    """An integer option in [low, high]."""
    return bounded(Range(int, low, high))


seed_value = bounded(RANGES["seed"])


def int_list(text: str) -> list[int]:
    """An option's comma-separated integers in [1, MAX_COUNT] ("10,25,50"), or argparse's one-line error."""
    try:
        values = [_positive(v) for v in text.split(",") if v.strip()]
    except argparse.ArgumentTypeError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers in [1, {MAX_COUNT}], got '{shown(text)}'")
    return values


_positive = count()
int_list.range = _positive.range


def checkpoint_options() -> argparse.ArgumentParser:
    """--checkpoint and --data: which trained model, and where the IMDB copy is."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--checkpoint", default="artifacts", help="folder written by torch_imdb.train")
    p.add_argument("--data", default=None, help="local IMDB copy (default: $TORCH_IMDB_DATA, else the hub)")
    return p


def sampling_options() -> argparse.ArgumentParser:
    """--background and --seed: the reference set and the seed of every sample drawn."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--background", type=count(1, MAX_REVIEWS), default=100,
                   help="training reviews in the background (reference) set")
    p.add_argument("--seed", type=seed_value, default=0, help="background drawn with SEED, reviews with SEED+1")
    return p


def reference_options() -> argparse.ArgumentParser:
    """--reference-background, --reference-reliability, --reference-budget and --cache: the Shapley reference of the
    faithfulness and frontier benchmarks (the shapley engine over the first rows of the background). One cache serves
    both: its folders are named by every setting that makes a reference value, so each reads the other's."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--reference-background", type=count(1, MAX_REVIEWS), default=20,
                   help="background rows of the Shapley game (the first of --background)")
    p.add_argument("--reference-reliability", type=bounded(Range(float, 0, 1, low_open=True, high_open=True)),
                   default=0.98, help="the shapley reference's split-half reliability target per review")
    p.add_argument("--reference-budget", type=count(1000, 10 ** 9), default=200_000,
                   help="the most forward rows per review of the shapley reference")
    p.add_argument("--cache", default="artifacts/reference", help="where reference values are cached per review")
    return p


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults printed once: not for options whose help names its default already, nor for None and flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if "default" in help or action.default in (None, False, argparse.SUPPRESS):
            return help
        return super()._get_help_string(action)


def answer_help(build_parser) -> None:
    """For scripts: answer ``-h/--help`` at once, before the script's heavy imports (torch takes seconds).

    Call it right after ``build_parser`` is defined, under ``if __name__ == "__main__":``.
    """
    import sys

    if {"-h", "--help"} & set(sys.argv[1:]):
        build_parser().parse_args(["--help"])  # prints the help and exits 0
