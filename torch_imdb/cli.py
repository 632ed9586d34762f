"""The options the commands share, defined once as argparse parent parsers."""

from __future__ import annotations

import argparse

# The engines `--engines` names; their registry (make_engine) is in torch_imdb.explain.compare.
ENGINES = ("shap", "captum", "fast", "fast-compiled")


def int_list(text: str) -> list[int]:
    """An option's comma-separated positive integers ("10,25,50"), or argparse's one-line error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def checkpoint_options() -> argparse.ArgumentParser:
    """--checkpoint and --data: which trained model, and where the IMDB copy is."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--checkpoint", default="artifacts", help="folder written by torch_imdb.train")
    p.add_argument("--data", default=None, help="local IMDB copy (default: $TORCH_IMDB_DATA, else the hub)")
    return p


def sampling_options() -> argparse.ArgumentParser:
    """--background and --seed: the reference set and the seed of every sample drawn."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--background", type=int, default=100, help="training reviews in the background (reference) set")
    p.add_argument("--seed", type=int, default=0, help="background drawn with SEED, reviews with SEED+1")
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
