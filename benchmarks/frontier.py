"""Which explainer, at what cost: every method at every budget against converged Shapley values.

    python benchmarks/frontier.py [--checkpoint artifacts] [--reviews 200] [--frontier-reviews 30]

On a trained checkpoint, the faithfulness benchmark's seeded sample of test
reviews and its reference background (the first --reference-background rows of
its seeded background of training reviews):

1. **the converged reference**: the ``shapley`` engine on the first --reviews,
   each sampled until its split-half reliability reaches --reference-reliability
   (or --reference-budget forward rows), cached per review under --cache in a
   folder named by every setting that makes it, so a rerun reads it back and an
   interrupted run resumes. Its two halves give its reliability over the reviews
   (Spearman-Brown), and the ceiling that puts on any method's agreement;
2. **every method at every budget** on the first --frontier-reviews: the
   gradient methods of the faithfulness benchmark, exact DeepSHAP, and the sampling
   methods (benchmarks/faithfulness.py's SAMPLED: shap's PartitionExplainer and
   PermutationExplainer, shapiq's paired KernelSHAP with Shapley-kernel or uniform
   (Leverage SHAP) sizes, the shapley engine), each timed in this run on this
   machine: seconds per review, Spearman with the reference (95% bootstrap
   interval) and deletion AOPC;
3. **the Pareto front**: the points that no other point beats on both speed and agreement.

Writes OUT/frontier.json (every number, settings, seeds, versions, the weights'
fingerprint), OUT/frontier.png (seconds per review on a log axis against
agreement, and against deletion AOPC, the front drawn and named) and
OUT/frontier.md (the table the docs show).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # faithfulness.py beside this file

from torch_imdb.cli import (Parser, answer_help, checkpoint_options, count, reference_options,  # noqa: E402
                            sampling_options)
from torch_imdb.config import MAX_REVIEWS  # noqa: E402
from torch_imdb.errors import UsageError, run_cli  # noqa: E402

FAST = ("deepshap_exact", "expected_gradients", "ig_padding", "grad_x_input", "occlusion", "attention", "lrp")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python benchmarks/frontier.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               parents=[checkpoint_options(), sampling_options(), reference_options()])
    p.add_argument("--reviews", type=count(1, MAX_REVIEWS), default=200, help="reviews with a converged reference")
    p.add_argument("--frontier-reviews", type=count(1, MAX_REVIEWS), default=30,
                   help="reviews every method runs on (the first of --reviews)")
    p.add_argument("--methods", default=None, help="comma-separated NAME or NAME@BUDGET (default: all that apply)")
    p.add_argument("--out", default="results/frontier", help="folder for frontier.json/.png")
    p.add_argument("--replot", action="store_true", help="redraw frontier.png and .md from --out's frontier.json")
    return p


if __name__ == "__main__":
    answer_help(build_parser)  # before the heavy imports below

import numpy as np  # noqa: E402
import torch  # noqa: E402
from faithfulness import (REFERENCE_SEED_OFFSET, SAMPLED, SAMPLE, UNITS, aopc, deletion_curve,  # noqa: E402
                          engine_reference, method_values, not_applicable, predictor, sampled_values)

from torch_imdb.faithfulness import bootstrap_ci, rank_agreement, split_half_reliability  # noqa: E402
from torch_imdb.io import atomic_savefig, atomic_write_json, atomic_write_text  # noqa: E402

def points(model, wanted: str | None) -> list[tuple[str, int | None]]:
    """(method, budget or None) of every point, those named in ``wanted`` ("NAME" or "NAME@BUDGET", comma-separated)."""
    every = [(m, None) for m in FAST if not not_applicable(m, model) and (m != "attention" or
                                                                        model.config.pool == "attention")]
    every += [(m, b) for m, budgets in SAMPLED.items() for b in budgets]
    if wanted is None:
        return every
    chosen = []
    for item in (w.strip() for w in wanted.split(",") if w.strip()):
        name, _, budget = item.partition("@")
        if name not in FAST and name not in SAMPLED:
            raise UsageError(f"--methods: unknown {name!r}; choose from {', '.join(FAST + tuple(SAMPLED))}")
        if name in SAMPLED:
            if budget and not budget.isdigit():
                raise UsageError(f"--methods: {item!r}: a budget is a whole number, as in shapley@8000")
            chosen += [(name, int(budget))] if budget else [(name, b) for b in SAMPLED[name]]
        else:
            chosen.append((name, None))
    return chosen


def label(name: str, budget: int | None) -> str:
    return name if budget is None else f"{name}@{budget}"


def pareto(records: dict) -> list[str]:
    """The labels no other point beats on both seconds per review (lower) and agreement (higher), fastest first."""
    items = sorted(records.items(), key=lambda kv: (kv[1]["seconds_per_review"], -kv[1]["agreement"]["mean"]))
    front, best = [], -np.inf
    for name, r in items:
        if r["agreement"]["mean"] > best:
            front.append(name)
            best = r["agreement"]["mean"]
    return front


def run(args) -> dict:
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import load_imdb
    from torch_imdb.sampling import sample_background, sample_test_reviews
    from torch_imdb.machine import machine_info

    if args.frontier_reviews > args.reviews or args.reference_background > args.background:
        raise UsageError("--frontier-reviews must be within --reviews and --reference-background within --background")
    ckpt = load_checkpoint(args.checkpoint)
    chosen = points(ckpt.model, args.methods)
    ds = load_imdb(args.data)
    cache_dir = Path(args.checkpoint) / "cache"
    bg_rows, bg = sample_background(ckpt, ds, args.background, args.seed, cache_dir)
    bg = bg[: args.reference_background]
    drawn = max(min(SAMPLE, len(ds["test"])), args.reviews)  # the faithfulness benchmark's sample, in its order
    rows, ids, _ = sample_test_reviews(ckpt, ds, drawn, args.seed, cache_dir)
    rows, ids = rows[: args.reviews], ids[: args.reviews]
    ref = engine_reference(ckpt.model, ids, rows, bg, args.reference_reliability, args.reference_budget, args.seed,
                           Path(args.cache), ckpt.fingerprint)
    n = args.frontier_reviews
    predict = predictor(ckpt.model)
    results: dict = {
        "weights_fingerprint": ckpt.fingerprint, "settings": dict(vars(args)), "machine": machine_info(),
        "torch_threads": torch.get_num_threads(), "test_rows": [int(r) for r in rows],
        "background_train_rows": [int(r) for r in bg_rows[: args.reference_background]],
        "reference": {"reviews": len(ids), "seed": args.seed + REFERENCE_SEED_OFFSET,
                      "convergence": split_half_reliability(ref["halves"][0], ref["halves"][1], ids),
                      "seconds_per_review": float(ref["seconds"].mean()),
                      "forward_rows_per_review": float(ref["evaluations"].mean()),
                      "computed_this_run": ref["computed"], "cache": ref["folder"]},
        "units": UNITS, "points": {}}
    for name, budget in chosen:
        key = label(name, budget)
        print(f"{key} on {n} reviews", flush=True)

        def values_of(reviews: np.ndarray) -> np.ndarray:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore")
                return (method_values(name, ckpt.model, reviews, bg, args.seed) if budget is None else
                        sampled_values(name, budget, ckpt.model, reviews, bg, args.seed, ckpt.vocab))

        values_of(ids[-1:])  # warm-up, untimed: imports, first calls, caches (a review outside the timed ones)
        t0 = time.perf_counter()
        values = values_of(ids[:n])
        seconds = (time.perf_counter() - t0) / n
        agree = rank_agreement(values, ref["values"][:n], ids[:n])
        results["points"][key] = {
            "method": name, "budget": budget, "unit": UNITS.get(name), "seconds_per_review": seconds,
            "agreement": bootstrap_ci(agree["spearman"], args.seed),
            "top5_overlap": bootstrap_ci(agree["top5_overlap"], args.seed),
            "deletion_aopc": bootstrap_ci(aopc(deletion_curve(predict, ids[:n], values)), args.seed)}
    results["reference_as_a_point"] = {"agreement_of_its_halves": bootstrap_ci(
        rank_agreement(ref["halves"][0][:n], ref["halves"][1][:n], ids[:n])["spearman"], args.seed)}
    results["pareto_front"] = pareto(results["points"])
    return results


LABEL_OFFSETS = [(4, 3), (4, -10), (4, 11), (4, -18), (4, 19), (-6, 3), (-6, -12), (-6, 13), (4, -27), (4, 28)]


def place_labels(ax, items: list[tuple[str, float, float]], fontsize: float = 7) -> None:
    """Annotate each (label, x, y) beside its point, at the first offset whose box (estimated from the text's
    length, in points) overlaps no label placed before it: clustered points keep readable labels."""
    ax.figure.canvas.draw()  # the transforms of the final limits and scales
    to_points = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    for text, x, y in sorted(items, key=lambda t: -t[2]):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        w, h = 0.58 * fontsize * len(text), fontsize + 1
        for dx, dy in LABEL_OFFSETS:
            x0 = px + dx if dx > 0 else px + dx - w
            box = (x0, py + dy, x0 + w, py + dy + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        moved = (dx, dy) != LABEL_OFFSETS[0]  # a thin leader says whose label it is
        ax.annotate(text, (x, y), fontsize=fontsize, xytext=(dx, dy), textcoords="offset points",
                    ha="left" if dx > 0 else "right",
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="grey", shrinkA=0, shrinkB=3) if moved else None)


def plot(path: Path, res: dict) -> None:
    """Two panels, seconds per review on a log x axis: agreement with the converged Shapley values (its Pareto front
    drawn and named, the reference's ceiling dotted), and deletion AOPC (the same front's points outlined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts, front = res["points"], res["pareto_front"]
    methods = sorted({p["method"] for p in pts.values()})
    # tab20's strong shades first, then its light ones: distinct colours for up to 20 methods
    colours = {m: plt.cm.tab20((2 * i) % 20 + (i >= 10)) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.6))
    conv = res["reference"]["convergence"]
    for ax, key, title in ((axes[0], "agreement", "Spearman with converged Shapley values"),
                           (axes[1], "deletion_aopc", "deletion AOPC (higher: the top tokens matter more)")):
        for name, p in pts.items():
            m = p[key]
            ax.errorbar(p["seconds_per_review"], m["mean"], yerr=[[m["mean"] - m["low"]], [m["high"] - m["mean"]]],
                        fmt="o", color=colours[p["method"]], ms=7 if name in front else 5, capsize=2,
                        mec="k" if name in front else "none")
        if key == "agreement":
            line = sorted(front, key=lambda n: pts[n]["seconds_per_review"])
            ax.plot([pts[n]["seconds_per_review"] for n in line], [pts[n][key]["mean"] for n in line], "k--", lw=0.8,
                    label="Pareto front: " + ", ".join(line))
            ax.axhline(conv["ceiling"], color="grey", ls=":", lw=1,
                       label=f"ceiling {conv['ceiling']:.3f}, set by the reference's reliability "
                             f"{conv['reliability']:.3f}")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per review (log scale; this machine, one run)")
        ax.set_title(title + ("" if key == "agreement" else "; outlined: the Pareto front of the left"), fontsize=10)
        ax.grid(alpha=0.3, which="both")
        place_labels(ax, [(name, p["seconds_per_review"], p[key]["mean"]) for name, p in pts.items()])
    n = res["settings"]["frontier_reviews"]
    fig.suptitle(f"{n} test reviews, reference on {res['reference']['reviews']} "
                 f"({res['reference']['seconds_per_review']:.1f} s/review); weights {res['weights_fingerprint']}; "
                 "means with 95% bootstrap intervals", fontsize=10)
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=110)
    plt.close(fig)


def markdown_table(res: dict) -> str:
    """The points as the docs show them, fastest first: seconds per review, Spearman with the converged values and
    deletion AOPC (means with 95% intervals), the Pareto front in bold."""
    def cell(c: dict) -> str:
        return f"{c['mean']:.3f} [{c['low']:.3f}, {c['high']:.3f}]"

    lines = ["| method | budget | s/review | Spearman with Shapley | deletion AOPC |", "|---|---|---|---|---|"]
    for name, p in sorted(res["points"].items(), key=lambda kv: kv[1]["seconds_per_review"]):
        shown = f"**{p['method']}**" if name in res["pareto_front"] else p["method"]
        budget = "" if p["budget"] is None else f"{p['budget']:,} {p['unit']}"
        lines.append(f"| {shown} | {budget} | {p['seconds_per_review']:.4f} | {cell(p['agreement'])} | "
                     f"{cell(p['deletion_aopc'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.replot:
        if not (out / "frontier.json").is_file():
            raise UsageError(f"--replot: no {out / 'frontier.json'}; run the benchmark with --out {out} first")
        res = json.loads((out / "frontier.json").read_text())
        plot(out / "frontier.png", res)
        atomic_write_text(out / "frontier.md", markdown_table(res) + "\n")
        print(f"redrew {out / 'frontier.png'} and .md from {out / 'frontier.json'}")
        return 0
    res = run(args)
    atomic_write_json(out / "frontier.json", res)
    plot(out / "frontier.png", res)
    atomic_write_text(out / "frontier.md", markdown_table(res) + "\n")
    conv = res["reference"]["convergence"]
    print(f"reference on {res['reference']['reviews']} reviews: reliability {conv['reliability']:.3f} (ceiling "
          f"{conv['ceiling']:.3f}), {res['reference']['seconds_per_review']:.2f} s/review")
    for name, p in res["points"].items():
        print(f"{name:>22}: Spearman {p['agreement']['mean']:.3f}, deletion AOPC {p['deletion_aopc']['mean']:.4f}, "
              f"{p['seconds_per_review']:.4f} s/review" + ("  (Pareto front)" if name in res["pareto_front"] else ""))
    print(f"wrote {out / 'frontier.json'}, .png and .md (the table the docs show)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
