"""``python -m torch_imdb.report``: one self-contained HTML page of everything measured.

Reads results/ (training metrics, the explain CSV and summary, the benchmark,
word importance, the whole-test-set timing) and writes results/report.html:
training curves, final metrics, shap's JS force plots and text plots of the
explained reviews, the shap-vs-Captum agreement table, the benchmark figure
and the word-importance figure. Images are inlined as base64 and shap's
JavaScript is inlined once, so the page opens from disk with no network.
A missing input leaves a note saying which command makes it.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from torch_imdb.cli import HelpFormatter, Parser
from torch_imdb.errors import UsageError, run_cli
from torch_imdb.io import atomic_write_text, read_json

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
td, th { border: 1px solid #ddd; padding: .3em .6em; text-align: right; }
th { background: #f5f5f5; } td.l, th.l { text-align: left; }
img { max-width: 100%; } .note { color: #a60; } .review { margin: 1.2em 0 2em; }
.force { min-height: 150px; } code { background: #f4f4f4; padding: 0 .2em; }
"""


# Derived outputs of the one model the report is about, and the command that makes each.
MODEL_OUTPUTS = {"train_metrics.json": "python -m torch_imdb.train --metrics-out results/train_metrics.json",
                 "explain_summary.json": "python -m torch_imdb.explain --engines shap,captum,fast",
                 "explainer_speed.json": "python benchmarks/explainer_speed.py",
                 "all_test_timing.json": "python -m torch_imdb.explain --all-test --timing-out results/all_test_timing.json",
                 "word_importance.json": "python -m torch_imdb.words",
                 "faithfulness.json": "python benchmarks/faithfulness.py"}


def model_fingerprint_of(results: Path) -> str | None:
    """The one weights fingerprint that the results' files share; a one-line error if they mix models."""
    found = {}
    for name, command in MODEL_OUTPUTS.items():
        data = _read_json(results / name)
        if data is None:
            continue
        if not data.get("weights_fingerprint"):
            raise UsageError(f"{results / name} records no weights fingerprint; regenerate it with `{command}`")
        found[name] = data["weights_fingerprint"]
    if len(set(found.values())) > 1:
        listing = ", ".join(f"{k} {v}" for k, v in found.items())
        raise UsageError(f"{results} mixes outputs of different weights ({listing}); regenerate the stale ones "
                         "from one checkpoint")
    return next(iter(found.values()), None)


def _read_json(path: Path) -> dict | None:
    """One of the results' JSON files (None when it is missing); a one-line error naming it when it is damaged."""
    if not path.exists():
        return None
    return read_json(path, f"regenerate it with `{MODEL_OUTPUTS.get(path.name, 'the command that wrote it')}`")


def _img(path: Path, alt: str) -> str:
    if not path.exists():
        return f'<p class="note">{html.escape(path.name)} is missing.</p>'
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fig_img(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(str(h))}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{html.escape(str(c))}</td>'
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


TEXT_BAR_START = '<svg width="100%" height="80px">'  # shap 0.51's text plot opens its own force bar with this
TEXT_BAR_END = "<div align='center'><div style=\"color: rgb(120,120,120); font-size: 12px; margin-top: -15px;\">inputs</div>"


def without_force_bar(text_html: str) -> str:
    """shap's text plot without the small force bar it draws above the words (labels cut to a few letters):
    the report shows shap's interactive force plot of the same review just above it. Left as it is when shap
    writes its plot differently."""
    start = text_html.find(TEXT_BAR_START)
    end = text_html.find(TEXT_BAR_END, start)
    if start < 0 or end < 0:
        return text_html
    return text_html[:start] + "<div align='center'>" + text_html[end + len(TEXT_BAR_END):]


def run_label(metrics: dict) -> str:
    """What a training run was, from its own config: epochs, and how its checkpoint was chosen."""
    cfg = metrics.get("config", {})
    label = f"{len(metrics['epochs'])} of {cfg.get('epochs', '?')} epochs"
    if cfg.get("val_fraction"):
        label += f", best {metrics.get('selected_by')} (--val-fraction {cfg['val_fraction']})"
    return label


def training_section(results: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(run_label(m), m) for m in (_read_json(results / f) for f in ("train_metrics.json",
                                                                          "train_metrics_early_stop.json")) if m]
    if not runs:
        return '<p class="note">No training metrics: run <code>python -m torch_imdb.train --metrics-out results/train_metrics.json</code>.</p>'
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for (name, m), style in zip(runs, ("-", "--")):
        ep = [r["epoch"] for r in m["epochs"]]
        for key, color in (("train", "#555"), ("test", "#ff0051"), ("val", "#008bfb")):
            if f"{key}_loss" in m["epochs"][0]:
                axes[0].plot(ep, [r[f"{key}_loss"] for r in m["epochs"]], style, color=color, label=f"{key}, {name}")
                axes[1].plot(ep, [r[f"{key}_acc"] for r in m["epochs"]], style, color=color, label=f"{key}, {name}")
    for ax, what in zip(axes, ("binary cross-entropy", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    img = _fig_img(fig, "training curves")
    plt.close(fig)
    rows = [[name, m.get("weights_fingerprint", "?"), m["n_train"], m["checkpoint_epoch"], m["selected_by"],
             f"{m['final_test_loss']:.4f}", f"{m['final_test_accuracy']:.4f}", f"{m['mean_train_seconds_per_epoch']:.1f}"]
            for name, m in runs]
    note = ("<p>The early-stop run is a different model (its own weights); it is shown for its training curve only, "
            "every other section explains the default run's weights.</p>") if len(runs) > 1 else ""
    return img + note + _table(["run", "weights", "train reviews", "checkpoint epoch", "chosen by", "test loss", "test accuracy",
                         "train s/epoch"], rows)


def _read_attributions_csv(path: Path) -> tuple[list[str], dict[int, dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        engines = [c for c in reader.fieldnames[5:] if "_minus_" not in c]
        reviews: dict[int, dict] = defaultdict(lambda: {"words": [], "ids": [], "values": []})
        for row in reader:
            r = reviews[int(row["review"])]
            r["source"] = row["source"]
            r["words"].append(row["word"])
            r["ids"].append(int(row["token_id"]))
            r["values"].append(float(row[engines[0]]))
    return engines, dict(reviews)


def explanation_section(results: Path) -> tuple[str, bool]:
    """Force plots and text plots of every explained review, and the agreement table. Returns (html, has_js)."""
    import shap

    from torch_imdb.plots import force_plot, token_explanation

    summary = _read_json(results / "explain_summary.json")
    csv_path = results / "explain_attributions.csv"
    if summary is None or not csv_path.exists():
        return '<p class="note">No explanations: run <code>python -m torch_imdb.explain</code>.</p>', False
    engines, reviews = _read_attributions_csv(csv_path)
    ev = summary["expected_value"]
    parts = []
    cfg = summary["config"]
    parts.append(f"<p>{cfg['reviews']} test reviews explained against {cfg['background']} training reviews "
                 f"(background seed {cfg['background_seed']}, reviews seed {cfg['reviews_seed']}); E[f] = {ev:.4f}. "
                 f"Values from <b>{html.escape(engines[0])}</b>; red raises P(positive), blue lowers it. "
                 "Padding positions are merged into one feature so each plot adds up.</p>")
    rows = [[name, f"{e['seconds']:.2f}", f"{e['max_abs_completeness_residual']:.2e}",
             f"{e['captum_max_abs_convergence_delta']:.2e}" if "captum_max_abs_convergence_delta" in e else "—"]
            for name, e in summary["engines"].items()]
    parts.append(_table(["engine", "seconds", "max |completeness residual|", "Captum max |delta|"], rows))
    rows = [[pair, f"{a['max_abs_diff']:.2e}", f"{a['mean_abs_diff']:.2e}", f"{a['correlation']:.9f}"]
            for pair, a in summary["agreement"].items()]
    parts.append(_table(["pair", "max |diff|", "mean |diff|", "correlation"], rows))
    plain = summary.get("plain_nn_rnn")
    if plain:
        parts.append(f"<p>The same libraries on the plain <code>nn.{html.escape(plain.get('module', 'LSTM'))}</code>: shap's additivity check "
                     f"{html.escape(plain['shap_additivity_check'][:70])} (max residual {plain['shap_max_abs_residual']:.3g}); "
                     f"Captum's max |convergence delta| {plain['captum_max_abs_delta']:.3g}.</p>")
    for n in sorted(reviews):
        r, meta = reviews[n], summary["reviews"][n]
        values, ids = np.array(r["values"]), np.array(r["ids"])
        plot = force_plot(ev, values, r["words"], ids)
        text = without_force_bar(shap.plots.text(token_explanation(values[None], ev, ids[None], [r["words"]])[0],
                                                 display=False))
        parts.append(f'<div class="review"><h3>{html.escape(r["source"])} — label {meta["label"]}, '
                     f'P(positive) = {meta["output"]:.3f}</h3><div class="force">{plot.html()}</div>{text}</div>')
    return "\n".join(parts), True


def benchmark_section(results: Path) -> str:
    bench = _read_json(results / "explainer_speed.json")
    if bench is None:
        return '<p class="note">No benchmark: run <code>python benchmarks/explainer_speed.py</code>.</p>'
    rows = [[name, f"{f['a_seconds']:.4f}", f"{f['b_seconds_per_background_row'] * 1e3:.3f}", f"{f['r2']:.4f}",
             f"{bench['at_reference_point']['seconds_per_review'].get(name, float('nan')):.4f}"]
            for name, f in bench["fits"].items() if f]
    ref = bench["at_reference_point"]
    ratios = ", ".join(f"{k.replace('_speedup_vs_shap', '')} {v:.1f}x" for k, v in ref.items() if k.endswith("speedup_vs_shap"))
    parts = [f"<p>{html.escape(bench['what']['model'])}; {html.escape(bench['machine']['cpu_model'])}, "
             f"{bench['machine']['cpu_count']} CPUs. Seconds per explained review = a + b × B.</p>",
             _table(["engine", "a (s)", "b (ms per background row)", "R²",
                     f"s/review at B={ref['background']}, N={ref['reviews']}"], rows),
             f"<p>Speed-up over shap.DeepExplainer at B={ref['background']}, N={ref['reviews']}: {ratios}.</p>",
             _img(results / "explainer_speed.png", "benchmark")]
    timing = _read_json(results / "all_test_timing.json")
    if timing:
        parts.append(f"<p>Whole test split ({timing['n_reviews']} reviews, B={timing['background']}) with the fast "
                     f"engine: {timing['seconds_this_run']:.0f} s.</p>")
    return "\n".join(parts)


def words_section(results: Path) -> str:
    meta = _read_json(results / "word_importance.json")
    if meta is None:
        return '<p class="note">No word importance: run <code>python -m torch_imdb.words</code>.</p>'
    agree = meta.get("agreement_with_log_count_ratio", {})
    rho = ", ".join(f"{k} words {agree[k]['spearman_shrunk']:.3f}" for k in ("all", "frequent")
                    if "spearman_shrunk" in agree.get(k, {}))
    return (f"<p>{meta['words']} words seen at least {meta['min_count']} times in {meta['reviews']} test reviews "
            f"({html.escape(meta['source'])}), ranked by an empirical-Bayes shrunk mean (bars; dots: raw mean with "
            "a 95% interval); the third panel is each word's total effect over the corpus. Spearman correlation "
            f"with the model-free log-count ratio of the train split: {html.escape(rho) or 'not computed'}.</p>"
            + _img(results / "word_importance.png", "word importance"))


def reference_kind(ref: dict) -> str:
    """How the faithfulness benchmark's Shapley reference was made, from its ``reference`` record."""
    reliability = ref.get("convergence", {}).get("reliability")
    reached = f"; reliability {reliability:.3f}" if reliability is not None else ""
    if ref.get("kind") == "shapley engine":
        return (f"the shapley engine, each review sampled to a split-half reliability of {ref['reliability_target']}, "
                f"{ref['forward_rows_per_review']:,.0f} forward rows a review{reached}")
    return f"shap.PermutationExplainer, {ref.get('permutations_per_review')} permutations a review{reached}"


def faithfulness_section(results: Path) -> str:
    res = _read_json(results / "faithfulness.json")
    if res is None:
        return '<p class="note">No faithfulness benchmark: run <code>python benchmarks/faithfulness.py</code>.</p>'

    def ci(d: dict) -> str:
        return f"{d['mean']:.3f} [{d['low']:.3f}, {d['high']:.3f}]"

    rows = [[name, ci(m["deletion_aopc"]), ci(m["insertion_aopc"]), ci(m["comprehensiveness"]), ci(m["sufficiency"]),
             ci(m["agreement_with_shapley"]["spearman"]) if "agreement_with_shapley" in m else "—",
             f"{m['seconds_per_review']:.4f}"] for name, m in res["methods"].items()]
    ref = res.get("reference", {})
    text = (f"<p>{len(res['test_rows'])} test reviews, background {res['settings']['background']}; the Shapley reference "
            f"({reference_kind(ref)}) on {ref.get('reviews')} of them with a background of {ref.get('background')}, "
            "every method recomputed with that background for the agreement column. Means with 95% bootstrap "
            "intervals; sufficiency: lower is better.</p>")
    return text + _table(["method", "deletion AOPC", "insertion AOPC", "comprehensiveness", "sufficiency",
                          "Spearman with Shapley", "s/review"], rows) + _img(results / "faithfulness.png", "faithfulness")


def section(build, results: Path, *names: str):
    """``build(results)``; a file that parses but lacks what the section reads (a key, a type, a number) is one line
    naming the files and the commands that regenerate them, not a traceback."""
    try:
        return build(results)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        present = [n for n in names if (results / n).exists()] or list(names)
        how = "; ".join(f"`{MODEL_OUTPUTS[n]}`" for n in present if n in MODEL_OUTPUTS) or "the command that wrote it"
        raise UsageError(f"{' or '.join(str(results / n) for n in present)} lacks what the report reads "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:80]}); regenerate it with {how}"
                         ) from None


def build_report(results: str | Path, out: str | Path) -> Path:
    """Write the HTML report for the files in ``results`` to ``out``; returns ``out``."""
    import shap

    results = Path(results)
    if not results.is_dir():
        raise UsageError(f"results folder {results} does not exist; run the project's commands first (see README)")
    fingerprint = model_fingerprint_of(results)
    explain_html, has_js = section(explanation_section, results, "explain_summary.json", "explain_attributions.csv")
    body = ["<h1>torch-imdb: an LSTM on IMDB, explained exactly</h1>",
            f"<p>Every section below comes from the weights with fingerprint <code>{fingerprint}</code> "
            "(checked across the files it reads).</p>",
            "<h2>Training</h2>",
            section(training_section, results, "train_metrics.json", "train_metrics_early_stop.json"),
            "<h2>Explanations: shap.DeepExplainer vs Captum DeepLiftShap on the twin</h2>", explain_html,
            "<h2>What explanations cost</h2>",
            section(benchmark_section, results, "explainer_speed.json", "all_test_timing.json"),
            "<h2>Global word importance</h2>", section(words_section, results, "word_importance.json"),
            "<h2>Faithfulness: which explanation finds what drives the model?</h2>",
            section(faithfulness_section, results, "faithfulness.json")]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>torch-imdb report</title>"
            f"<style>{CSS}</style>{shap.getjs() if has_js else ''}</head><body>" + "\n".join(body) + "</body></html>\n")
    atomic_write_text(out, page)
    return Path(out)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m torch_imdb.report", description=__doc__,
               formatter_class=HelpFormatter)
    p.add_argument("--results", default="results", help="folder with the project's results")
    p.add_argument("--out", default=None, help="HTML file to write (default: RESULTS/report.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = build_report(args.results, args.out or Path(args.results) / "report.html")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
