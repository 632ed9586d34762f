"""``python -m torch_imdb.explain``: explain test reviews with shap and Captum (and the fast engine).

Default: 10 test reviews against 100 training reviews (both sampled with
--seed), explained by shap.DeepExplainer and Captum DeepLiftShap on the twin;
writes the per-token CSV, the summary JSON, the force plot (HTML and PNG) and
a word figure to --out. ``--text`` explains reviews you type instead;
``--all-test`` explains the whole test split with the fast engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch_imdb.cli import ENGINES, HelpFormatter, Parser, checkpoint_options, count, sampling_options
from torch_imdb.config import MAX_REVIEWS
from torch_imdb.errors import UsageError, run_cli


# Which mode each mode-specific option belongs to: an option given in another mode is refused, not ignored.
OPTION_MODES = {
    "reviews": ("sample",), "text": ("text",), "engines": ("sample", "text"), "out": ("sample", "text"),
    "plain_rnn": ("sample", "text"), "input": ("input",), "encoding": ("input",), "engine": ("input",),
    "ray_address": ("ray",), "workers": ("ray",), "threads_per_worker": ("ray",), "all_test": ("all-test",),
    "out_dir": ("input", "all-test"), "limit": ("all-test",), "chunk_reviews": ("input", "all-test"),
    "no_compile": ("input", "all-test"), "timing_out": ("all-test",),
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m torch_imdb.explain", description=__doc__,
               formatter_class=HelpFormatter,
               parents=[checkpoint_options(), sampling_options()])
    g = p.add_argument_group("sampled test reviews (the default) or --text: shap, Captum and the fast engine compared")
    g.add_argument("--reviews", type=count(1, MAX_REVIEWS), default=10, help="test reviews to explain")
    g.add_argument("--text", action="append", default=None,
                   help="explain this review instead of sampled ones (repeat for several)")
    g.add_argument("--engines", default=None,
                   help=f"comma-separated engines from {', '.join(ENGINES)}; the first is the reference (default: "
                        "shap,captum for sampled reviews; for --text the fast engine, or shap for a model it does not take)")
    g.add_argument("--out", default=None,
                   help="output folder (default: results/ for sampled reviews, CHECKPOINT/explain_text for --text)")
    g.add_argument("--plain-rnn", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the libraries on the plain nn.LSTM / nn.GRU, the negative control (default: on for "
                        "sampled reviews, off for --text)")
    g = p.add_argument_group("--input PATH: every review of your files, with the fast engine")
    g.add_argument("--input", default=None,
                   help="a file, folder or glob: one review per line (.txt), or the `text` column (and `id`, `label` "
                        "when present) of .csv, .parquet or .jsonl files; writes parquet parts to --out-dir (default "
                        "CHECKPOINT/explain_input), and with the local engine tokens.csv and word_summary.csv")
    g.add_argument("--encoding", default="utf-8",
                   help="how .txt, .csv and .jsonl files are decoded (a byte-order mark is dropped; bytes that do not "
                        "decode become U+FFFD with a warning naming the row)")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="run the fast engine in this process, or on Ray Data (pip install 'torch-imdb[ray]')")
    g.add_argument("--ray-address", default=None,
                   help="with --engine ray: the cluster to join (e.g. 10.0.0.1:6379; default: a new local Ray)")
    g.add_argument("--workers", type=count(0, 1024), default=0,
                   help="with --engine ray: actors in the pool (0: as many as the cluster's CPUs allow)")
    g.add_argument("--threads-per-worker", type=count(1, 1024), default=1,
                   help="with --engine ray: CPUs each actor asks for, and its torch thread count")
    g = p.add_argument_group("--all-test: the whole test split, with the fast engine")
    g.add_argument("--all-test", action="store_true",
                   help="explain the whole test split, streamed to resumable parquet chunks")
    g.add_argument("--limit", type=count(0, MAX_REVIEWS), default=0,
                   help="a seeded sample of this many test reviews (0: all)")
    g.add_argument("--timing-out", default=None, help="also copy the run's manifest (timing) here")
    g = p.add_argument_group("--input and --all-test")
    g.add_argument("--out-dir", default=None,
                   help="where the parquet chunks go (default: CHECKPOINT/explain_input or CHECKPOINT/all_test)")
    g.add_argument("--chunk-reviews", type=count(), default=500,
                   help="reviews per parquet chunk, or per Ray batch (what a restart can lose)")
    g.add_argument("--no-compile", action="store_true", help="run the fast engine without torch.compile")
    return p


def mode_name(mode: str) -> str:
    """How messages name a mode: the flag that chooses it."""
    return {"sample": "sampled reviews", "ray": "--engine ray"}.get(mode, f"--{mode}")


def mode_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The one mode the options ask for; a one-line error for two modes, or an option of another mode."""
    chosen = [m for m, on in (("text", args.text), ("input", args.input), ("all-test", args.all_test)) if on]
    if len(chosen) > 1:
        raise UsageError(f"--{chosen[0]} and --{chosen[1]} are two modes; give one")
    mode = chosen[0] if chosen else "sample"
    for dest, modes in OPTION_MODES.items():
        if getattr(args, dest) == parser.get_default(dest):
            continue
        here = mode if not (mode == "input" and args.engine == "ray") else "ray"
        if mode not in modes and here not in modes:
            flag = "--" + dest.replace("_", "-")
            wants = " or ".join(mode_name(m) for m in modes)
            raise UsageError(f"{flag} is an option of {wants}; it does nothing with {mode_name(mode)}, so leave it out")
    return mode


def run_settings(args, cache: Path):
    """The corpus runners' settings, from the command line: one object for either runner."""
    from torch_imdb.explain.corpus import RunSettings

    return RunSettings(background=args.background, seed=args.seed, chunk_reviews=args.chunk_reviews,
                       compile=not args.no_compile, cache_dir=cache, address=args.ray_address, workers=args.workers,
                       threads_per_worker=args.threads_per_worker, encoding=args.encoding)


def explain_input(args, ckpt, dataset, cache: Path) -> int:
    """--input: read the file, explain every usable row, write chunks, the token table and the word summary."""
    from torch_imdb.explain.corpus import explain_ids, read_attributions
    from torch_imdb.explain.texts import read_usable_texts, write_token_table
    from torch_imdb.words import word_importance
    from torch_imdb.words import write_csv as write_words

    out = Path(args.out_dir or Path(args.checkpoint) / "explain_input")
    settings = run_settings(args, cache)
    if args.engine == "ray":
        from torch_imdb.explain.ray_corpus import explain_input_ray

        manifest = explain_input_ray(ckpt, dataset, spec=args.input, out_dir=out, settings=settings,
                                     log=lambda line: print(line, file=sys.stderr))
        print(f"explained {manifest['reviews_computed_this_run']} reviews on Ray ({manifest['workers']} workers on "
              f"{manifest['nodes_used']} node(s), {manifest['seconds_this_run']:.1f} s) into {out}: "
              f"{manifest['n_reviews']} reviews in {manifest['parts']} parquet part(s); summarise them by word with "
              f"`python -m torch_imdb.words --attributions {out}`")
        return 0
    got = read_usable_texts(args.input, lambda line: print(line, file=sys.stderr), args.encoding)
    ids = ckpt.vocab.encode_many(got.texts, ckpt.maxlen)
    source = {"input": str(Path(args.input).resolve()), "input_sha256": got.fingerprint, "encoding": args.encoding,
              "input_rows": got.rows, "skipped_rows": len(got.skipped)}
    manifest = explain_ids(ckpt, dataset, tokens=ids, review_ids=got.ids, labels=got.labels, out_dir=out,
                           source=source, settings=settings)
    attributions = read_attributions(out, fingerprint=ckpt.fingerprint)
    n_tokens = write_token_table(out / "tokens.csv", ckpt, attributions)
    write_words(out / "word_summary.csv", word_importance(attributions["ids"], attributions["values"], ckpt.vocab,
                                                          min_count=1))
    print(f"explained {manifest['n_reviews']} reviews ({len(got.skipped)} rows skipped) into {out}: "
          f"{n_tokens} tokens in tokens.csv, words in word_summary.csv")
    return 0


def default_engines(mode: str) -> str:
    """shap,captum for sampled reviews (the libraries' values, compared); for typed reviews the fast engine."""
    return "fast" if mode == "text" else "shap,captum"


def text_warnings(texts: list[str], ckpt) -> list[str]:
    """A warning per typed review the model reads poorly: mostly unknown words, or cut to its last maxlen tokens."""
    from torch_imdb.data import tokenize

    index = ckpt.vocab.index()
    lines = []
    for n, text in enumerate(texts, 1):
        words = tokenize(text)
        seen = words[-(ckpt.maxlen - 1):] if ckpt.maxlen > 1 else []  # the start token takes one position
        unknown = sum(w not in index for w in seen)
        if len(words) > len(seen):
            lines.append(f"warning: --text {n}: {len(words)} words, the model reads the last {len(seen)} (maxlen "
                         f"{ckpt.maxlen}, as in training)")
        if not seen or unknown * 2 >= len(seen):
            lines.append(f"warning: --text {n}: {unknown} of {len(seen)} words are not in the model's vocabulary; "
                         "its prediction rests on the start token and padding, not on this review")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = mode_of(args, parser)
    # torch and the libraries load here, not for --help
    import numpy as np

    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import load_imdb
    from torch_imdb.explain.compare import explain_reviews, summarize, write_csv, write_summary
    from torch_imdb.plots import force_plot, save_force_html, save_force_png, save_token_figure
    from torch_imdb.machine import machine_info

    ckpt = load_checkpoint(args.checkpoint)
    dataset = load_imdb(args.data)
    cache = Path(args.checkpoint) / "cache"
    if mode == "input":
        return explain_input(args, ckpt, dataset, cache)
    if mode == "all-test":
        from torch_imdb.explain.corpus import default_out_dir, explain_split
        from torch_imdb.io import atomic_write_json

        out_dir = args.out_dir or default_out_dir(args.checkpoint)
        manifest = explain_split(ckpt, dataset, out_dir, settings=run_settings(args, cache), limit=args.limit)
        manifest["machine"] = machine_info()
        print(f"explained {manifest['n_reviews']} reviews into {out_dir}: "
              f"{manifest['seconds_this_run']:.1f} s this run")
        if args.timing_out:
            atomic_write_json(args.timing_out, {k: v for k, v in manifest.items() if k != "background_train_rows"})
        return 0

    engines = tuple(e.strip() for e in (args.engines or default_engines(mode)).split(",") if e.strip())
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise UsageError(f"--engines: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(ENGINES)}")
    out = Path(args.out or (Path(args.checkpoint) / "explain_text" if mode == "text" else "results"))
    if mode == "text":
        for line in text_warnings(args.text, ckpt):
            print(line, file=sys.stderr)
    plain_rnn = args.plain_rnn if args.plain_rnn is not None else mode == "sample"
    ex = explain_reviews(ckpt, dataset, args.background, args.reviews, args.seed, engines, texts=args.text,
                         cache_dir=cache, with_plain_rnn=plain_rnn)
    summary = summarize(ex, machine_info())
    write_csv(out / "explain_attributions.csv", ex)
    write_summary(out / "explain_summary.json", summary)
    ref = ex.results[engines[0]]
    base = ref.base_value(0)
    save_force_html(out / "force_plot.html", force_plot(base, ref.values[0], ex.words[0], ex.ids[0]))
    save_force_png(out / "force_plot.png", base, ref.values[0], ex.words[0], ex.ids[0],
                   title=f"{ex.sources[0]}: P(positive) = {ref.outputs[0]:.3f}, E[f] = {base:.3f}")
    shown = [{"words": ex.words[n], "ids": ex.ids[n], "values": ref.values[n],
              "title": f"{ex.sources[n]}  label={ex.labels[n]}  P(positive)={ref.outputs[n]:.3f}"}
             for n in range(min(4, len(ex.ids)))]
    save_token_figure(out / "token_attributions.png", shown)

    per_review = " (mean of the per-review values: the model's masks come from each review's ids)" \
        if np.ndim(ref.expected_value) else ""
    print(f"expected value E[f] = {np.mean(ref.expected_value):.4f} over {args.background} background reviews{per_review}")
    for name, e in summary["engines"].items():
        print(f"{name:>7}: {e['seconds']:.2f} s, max |completeness residual| {e['max_abs_completeness_residual']:.2e}")
    for pair, a in summary["agreement"].items():
        print(f"{pair}: max |diff| {a['max_abs_diff']:.2e}, correlation {a['correlation']:.8f}")
    for n, r in enumerate(summary["reviews"]):
        top = ", ".join(f"{t['word']} {t['value']:+.3f}" for t in r[f"top5_{engines[0]}"])
        print(f"review {n} ({r['source']}, P={r['output']:.3f}): {top}")
    att = summary["attention_vs_attributions"]
    if att:
        print(f"attention vs |{att['engine']}|: mean Spearman {att['mean_spearman']:+.3f} over the reviews' tokens; "
              f"same top token in {sum(att['top_token_same'])} of {len(att['top_token_same'])} reviews")
    if ex.plain_rnn:
        print(f"plain nn.{ex.plain_rnn['module']}: shap additivity {ex.plain_rnn['shap_additivity_check'][:60]}; "
              f"max residual {ex.plain_rnn['shap_max_abs_residual']:.3g}; "
              f"Captum max |delta| {ex.plain_rnn['captum_max_abs_delta']:.3g}")
    print(f"wrote {out}/explain_attributions.csv, explain_summary.json, force_plot.html/.png, token_attributions.png")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
