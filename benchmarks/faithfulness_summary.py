"""One row per model: the faithfulness benchmark's headline numbers, side by side.

    python benchmarks/faithfulness_summary.py [results/faithfulness.json results/faithfulness/*/faithfulness.json]

Reads the JSON that ``benchmarks/faithfulness.py`` wrote for each model (each row is
one model's run, named by its checkpoint and weights fingerprint; no number mixes
two models) and writes results/faithfulness_models.md: the reference's reviews and kind, its
reliability and ceiling, and for Spearman with the Shapley reference, deletion AOPC,
comprehensiveness, insertion AOPC and sufficiency the value of exact DeepSHAP, the
best other method's, and their paired difference (other minus exact, 95% interval).
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

from torch_imdb.cli import Parser
from torch_imdb.errors import UsageError, run_cli
from torch_imdb.io import atomic_write_text, read_json

# (metric, its key in a method's record, True when higher is better)
METRICS = [("Spearman with Shapley", "agreement", True), ("deletion AOPC", "deletion_aopc", True),
           ("comprehensiveness", "comprehensiveness", True), ("insertion AOPC", "insertion_aopc", True),
           ("sufficiency ↓", "sufficiency", False)]
EXACT = "deepshap_exact"
NOT_RANKED = ("random",)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python benchmarks/faithfulness_summary.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="faithfulness.json files (default: results/faithfulness.json and "
                                            "results/faithfulness/*/faithfulness.json)")
    p.add_argument("--out", default="results/faithfulness_models.md", help="the markdown table to write")
    return p


def metric(record: dict, key: str) -> dict | None:
    """A method's {mean, low, high} for ``key`` ('agreement': Spearman with the Shapley reference)."""
    if key == "agreement":
        return (record.get("agreement_with_shapley") or {}).get("spearman")
    return record.get(key)


def best_other(methods: dict, key: str, higher: bool) -> tuple[str, dict] | None:
    """The method other than exact DeepSHAP (and random) with the best mean for ``key``."""
    scored = [(name, metric(r, key)) for name, r in methods.items() if name != EXACT and name not in NOT_RANKED]
    scored = [(name, m) for name, m in scored if m is not None]
    if not scored:
        return None
    return max(scored, key=lambda item: item[1]["mean"] if higher else -item[1]["mean"])


def cell(methods: dict, key: str, higher: bool) -> str:
    """'exact | best other name value (other - exact [low, high])'."""
    exact = metric(methods[EXACT], key)
    other = best_other(methods, key, higher)
    if exact is None or other is None:
        return "n/a"
    name, m = other
    diff = methods[name].get("minus_exact", {}).get(key)
    paired = f" ({diff['mean']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}])" if diff else ""
    return f"{exact['mean']:.3f}; {name} {m['mean']:.3f}{paired}"


def reference_of(ref: dict) -> str:
    """The reference's reviews and kind: the shapley engine's, sampled to a reliability, or shap's permutations."""
    if not ref:
        return "0"
    if "permutations_per_review" in ref:
        return f"{ref['reviews']}, {ref['permutations_per_review']} permutations"
    return f"{ref['reviews']}, shapley engine"


def summary_rows(files: list[Path]) -> list[str]:
    header = ("| model | reviews (reference) | reference reliability → ceiling | "
              + " | ".join(f"{label}: exact; best other (paired)" for label, _, _ in METRICS) + " |")
    rows = [header, "|" + "---|" * (3 + len(METRICS))]
    for f in files:
        fix = "run benchmarks/faithfulness.py"
        d = read_json(f, fix, what="a faithfulness.json")
        try:
            methods, settings, ref = d["methods"], d["settings"], d.get("reference") or {}
        except (KeyError, AttributeError) as exc:
            raise UsageError(f"{f} is not a faithfulness.json ({type(exc).__name__}); run benchmarks/faithfulness.py") from None
        if EXACT not in methods:
            raise UsageError(f"{f} has no {EXACT} results; run benchmarks/faithfulness.py with it")
        conv = ref.get("convergence") or {}
        name = Path(settings["checkpoint"]).name
        model = f"{'seed model' if name == 'artifacts' else name} `{d['weights_fingerprint']}`"
        reliability = f"{conv['reliability']:.3f} → {conv['ceiling']:.3f}" if conv else "no reference"
        rows.append(f"| {model} | {settings['reviews']} ({reference_of(ref)}) | {reliability} | "
                    + " | ".join(cell(methods, key, higher) for _, key, higher in METRICS) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    files = [Path(f) for f in args.files] or [Path("results/faithfulness.json"),
                                               *map(Path, sorted(glob.glob("results/faithfulness/*/faithfulness.json")))]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}; run benchmarks/faithfulness.py for that model first")
    text = "\n".join(summary_rows(files)) + "\n"
    atomic_write_text(args.out, text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
