"""Global word importance: token attributions grouped by word, over many reviews.

``python -m torch_imdb.words`` reads the whole-test-set attributions of
``python -m torch_imdb.explain --all-test`` when they exist, else explains a
seeded sample of test reviews (default 2,000) with the fast engine, and writes
results/word_importance.csv, .png and .json (settings and seed).

Summing SHAP values by *position* means nothing for text (position 0 is a
different word in every review), so the global view groups by word: for each
vocabulary word, how often it occurs, in how many reviews, its mean
attribution, mean |attribution|, a 95% interval for the mean (normal
approximation with the standard error over occurrences), and two rankings a
reader can trust:

- ``shrunk``: an empirical-Bayes estimate of the word's mean. A word seen 20
  times has a noisy mean; the estimate pulls each mean towards the mean over all
  words by how noisy it is (normal prior, its variance from the spread of the
  word means minus their average noise), so rare words rank high only when their
  evidence is strong. The ranking and the figure use it; the plain mean stays in the CSV.
- ``total``: the sum of the word's attributions over the corpus, how much it
  moved predictions in all: frequent words with steady effects lead it.

Padding, the start marker and out-of-vocabulary are reported separately, never
ranked as words. The ranking is checked against a reference that involves no
model: each word's log-count ratio between positive and negative TRAIN reviews
(add-one smoothed), with the Spearman correlation reported overall and for
frequent words.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from torch_imdb.cli import HelpFormatter, Parser, checkpoint_options, count, sampling_options
from torch_imdb.config import MAX_REVIEWS
from torch_imdb.data import N_RESERVED, Vocab
from torch_imdb.errors import UsageError, run_cli
from torch_imdb.faithfulness import spearman
from torch_imdb.io import atomic_path, atomic_savefig, atomic_write_json


@dataclass
class WordStat:
    word: str
    token_id: int
    kind: str  # "word" or "special"
    occurrences: int
    reviews: int
    mean: float
    mean_abs: float
    std: float
    ci_low: float
    ci_high: float
    shrunk: float = 0.0  # empirical-Bayes mean, what the ranking uses
    total: float = 0.0  # summed attribution over the corpus


def word_importance(ids: np.ndarray, values: np.ndarray, vocab: Vocab, min_count: int = 20) -> list[WordStat]:
    """Group attributions (N, T) of token ids (N, T) by token; words seen < ``min_count`` times are left out.

    Returns word rows sorted by mean attribution (most positive first), then the
    special tokens (padding, start, OOV) whatever their count.
    """
    if ids.shape != values.shape:
        raise ValueError(f"ids {ids.shape} and values {values.shape} differ in shape")
    flat_ids = ids.ravel().astype(np.int64)
    flat_vals = values.ravel().astype(np.float64)
    size = max(vocab.size, int(flat_ids.max()) + 1)
    count = np.bincount(flat_ids, minlength=size)
    total = np.bincount(flat_ids, weights=flat_vals, minlength=size)
    total_abs = np.bincount(flat_ids, weights=np.abs(flat_vals), minlength=size)
    total_sq = np.bincount(flat_ids, weights=flat_vals**2, minlength=size)
    # reviews containing each token: count distinct (review, token) pairs
    pairs = np.unique(np.arange(ids.shape[0]).repeat(ids.shape[1]) * size + flat_ids)
    in_reviews = np.bincount(pairs % size, minlength=size)
    rows = []
    for tok in np.nonzero(count)[0]:
        n = int(count[tok])
        special = tok < N_RESERVED
        if not special and n < min_count:
            continue
        mean = total[tok] / n
        var = max(total_sq[tok] / n - mean**2, 0.0) * n / max(n - 1, 1)
        half = 1.96 * np.sqrt(var / n)
        rows.append(WordStat(vocab.word(int(tok)), int(tok), "special" if special else "word",
                             n, int(in_reviews[tok]), float(mean), float(total_abs[tok] / n), float(np.sqrt(var)),
                             float(mean - half), float(mean + half)))
    words = [r for r in rows if r.kind == "word"]
    for r, m in zip(words, shrink([r.mean for r in words], [r.std**2 / r.occurrences for r in words])):
        r.shrunk = float(m)
    for r in rows:
        r.total = r.mean * r.occurrences
    words.sort(key=lambda r: -r.shrunk)
    return words + [r for r in rows if r.kind == "special"]


def shrink(means: list[float], noise: list[float]) -> np.ndarray:
    """Empirical-Bayes (normal-normal) estimates of true means from noisy means with known noise variances.

    Prior N(mu, tau2) with mu the precision-weighted mean and tau2 = max(var(means) - mean(noise), 0)
    (method of moments); each mean moves towards mu by noise / (noise + tau2).
    """
    m, v = np.asarray(means, dtype=np.float64), np.maximum(np.asarray(noise, dtype=np.float64), 1e-30)
    if len(m) < 2:
        return m
    tau2 = max(float(m.var() - v.mean()), 0.0)
    mu = float(np.average(m, weights=1 / (v + tau2))) if tau2 > 0 else float(np.average(m, weights=1 / v))
    return mu + (m - mu) * (tau2 / (tau2 + v))


def log_count_ratios(texts, labels, vocab: Vocab) -> np.ndarray:
    """Per token id: log of the word's add-one-smoothed frequency in positive over negative reviews (no model).

    Counts run over the whole text of each review, tokenized as the model's input is.
    """
    from torch_imdb.data import tokenize

    index = vocab.index()
    counts = np.ones((2, vocab.size))  # add-one smoothing
    for text, label in zip(texts, labels):
        for w in tokenize(text):
            k = index.get(w)
            if k is not None:
                counts[int(label), k] += 1
    freq = counts / counts.sum(axis=1, keepdims=True)
    return np.log(freq[1]) - np.log(freq[0])


def agreement_with_reference(stats: list[WordStat], ratios: np.ndarray, frequent: int = 200) -> dict:
    """Spearman correlation of each ranking score with the model-free log-count ratio, overall and for frequent words."""
    words = [s for s in stats if s.kind == "word"]
    out = {"reference": "log-count ratio of each word between positive and negative train reviews (add-one smoothed)",
           "frequent_min_occurrences": frequent}
    for subset, group in (("all", words), ("frequent", [s for s in words if s.occurrences >= frequent])):
        ref = ratios[[s.token_id for s in group]]
        out[subset] = {"words": len(group), **({f"spearman_{key}": spearman([getattr(s, key) for s in group], ref)
                                                 for key in ("shrunk", "mean", "total")} if len(group) > 2 else {})}
    return out


def write_csv(path: str | Path, stats: list[WordStat]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(asdict(stats[0])))
        w.writeheader()
        for s in stats:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(s).items()})


def plot_top_words(path: str | Path, stats: list[WordStat], k: int = 20, title: str = "") -> None:
    """Top ``k`` words each way by the shrunk mean (with the raw mean's 95% interval), and by total effect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    words = [s for s in stats if s.kind == "word"]
    top, bottom = words[:k], words[::-1][:k]
    by_total = sorted(words, key=lambda s: -s.total)
    total = by_total[: k // 2] + by_total[::-1][: k // 2][::-1]
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(17, 0.28 * k + 2.3))
    for ax, group, color, label in ((axes[0], top, "#ff0051", "raise P(positive)"),
                                    (axes[1], bottom, "#008bfb", "lower P(positive)")):
        y = np.arange(len(group))[::-1]
        ax.barh(y, [s.shrunk for s in group], color=color, alpha=0.85, label="bar: shrunk mean (ranks the words)")
        ax.errorbar([s.mean for s in group], y, xerr=[[s.mean - s.ci_low for s in group], [s.ci_high - s.mean for s in group]],
                    fmt="o", color="k", ms=3, lw=0.8, capsize=2, label="dot: raw mean with its 95% interval")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_yticks(y)
        ax.set_yticklabels([f"{s.word} ({s.occurrences})" for s in group], fontsize=9)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_xlabel("attribution to P(positive) per occurrence")
        ax.set_title(f"top {k} words that {label}\n(empirical-Bayes shrunk mean; (n) = occurrences)", fontsize=10)
    y = np.arange(len(total))[::-1]
    axes[2].barh(y, [s.total for s in total], color=["#ff0051" if s.total > 0 else "#008bfb" for s in total], alpha=0.85)
    axes[2].set_yticks(y)
    axes[2].set_yticklabels([f"{s.word} ({s.occurrences})" for s in total], fontsize=9)
    axes[2].axvline(0, color="k", lw=0.6)
    axes[2].set_xlabel("summed attribution over all reviews")
    axes[2].set_title(f"total effect: the {k // 2} words that moved\npredictions most, each way", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    atomic_savefig(path, fig, dpi=110)
    plt.close(fig)


def attributions_for_words(ckpt, dataset, attributions: str | Path | None, sample: int, background: int, seed: int,
                           cache_dir: str | Path | None = None, required: bool = False
                           ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Token ids and values (N, T): from a finished ``--all-test`` / ``--input`` folder, else a fresh seeded sample.

    ``required``: the user named the folder, so a folder that is missing, unfinished
    or of other weights is refused in one line rather than replaced by a sample.
    """
    from torch_imdb.explain.corpus import read_attributions, read_manifest
    from torch_imdb.sampling import sample_background, sample_test_reviews
    from torch_imdb.explain.engines import make_engine
    import torch

    folder = Path(attributions) if attributions else None
    meta = read_manifest(folder) if folder is not None and folder.is_dir() else None
    if required:
        if folder is None or not folder.is_dir():
            raise UsageError(f"--attributions {attributions} is not a folder; give the --out-dir of "
                             "`python -m torch_imdb.explain --all-test` or `--input`, or leave it out to explain a sample")
        if meta is None:
            raise UsageError(f"--attributions {attributions} holds no manifest.json: it is not an output of "
                             "`python -m torch_imdb.explain --all-test` or `--input`")
        if not meta.get("complete"):
            raise UsageError(f"--attributions {attributions} is an unfinished run; run the command that started it "
                             "again to finish it (it resumes), then summarise")
    if meta is not None and meta.get("complete"):
        got = read_attributions(folder, fingerprint=ckpt.fingerprint)
        source = f"{attributions} (python -m torch_imdb.explain --all-test or --input)"
        return got["ids"], got["values"], {"source": source,
                                           "reviews": int(len(got["ids"])), "background": meta["background"],
                                           "seed": meta["seed"], "weights_fingerprint": ckpt.fingerprint}
    _, bg = sample_background(ckpt, dataset, background, seed, cache_dir)
    rows, ids, _ = sample_test_reviews(ckpt, dataset, sample, seed, cache_dir)
    t0 = time.perf_counter()
    engine = make_engine("fast-compiled" if sample >= 500 else "fast", ckpt.model, progress=True)
    values = engine.attribute(torch.from_numpy(ids), torch.from_numpy(bg)).values
    return ids, values, {"source": f"fast engine on a seeded sample of {sample} test reviews", "reviews": int(sample),
                         "background": background, "seed": seed, "seconds": time.perf_counter() - t0,
                         "weights_fingerprint": ckpt.fingerprint}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m torch_imdb.words", description=__doc__,
               formatter_class=HelpFormatter,
               parents=[checkpoint_options(), sampling_options()])
    p.add_argument("--attributions", default=None,
                   help="folder of `explain --all-test` or `--input` to summarise; refused unless finished and of "
                        "these weights (default: CHECKPOINT/all_test when finished, else a sample is explained)")
    p.add_argument("--sample", type=count(1, MAX_REVIEWS), default=2000,
                   help="test reviews to explain when there is no --attributions")
    p.add_argument("--min-count", type=count(), default=20, help="leave out words seen fewer times")
    p.add_argument("--top", type=count(1, 1000), default=20, help="words per side in the figure")
    p.add_argument("--frequent", type=count(0), default=200,
                   help="words seen at least this often count as frequent in the agreement with the log-count ratio")
    p.add_argument("--out", default="results", help="folder for word_importance.csv/.png/.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from torch_imdb.checkpoint import load_checkpoint  # torch loads here, not for --help
    from torch_imdb.data import load_imdb
    from torch_imdb.explain.corpus import default_out_dir

    ckpt = load_checkpoint(args.checkpoint)
    attributions = args.attributions or default_out_dir(args.checkpoint)
    dataset = load_imdb(args.data)
    ids, values, meta = attributions_for_words(ckpt, dataset, attributions, args.sample, args.background, args.seed,
                                               Path(args.checkpoint) / "cache", required=args.attributions is not None)
    stats = word_importance(ids, values, ckpt.vocab, args.min_count)
    if sum(s.kind == "word" for s in stats) < 2:
        raise UsageError(f"fewer than 2 words occur at least {args.min_count} times; lower --min-count or explain more reviews")
    train = dataset["train"]
    reference = agreement_with_reference(stats, log_count_ratios(train["text"], train["label"], ckpt.vocab),
                                         args.frequent)
    out = Path(args.out)
    write_csv(out / "word_importance.csv", stats)
    plot_top_words(out / "word_importance.png", stats, args.top,
                   title=f"{meta['reviews']} test reviews, background {meta['background']}, words seen >= {args.min_count} times")
    n_words = sum(s.kind == "word" for s in stats)
    words = [s for s in stats if s.kind == "word"]
    by_total = sorted(words, key=lambda s: -s.total)
    atomic_write_json(out / "word_importance.json", {
        "weights_fingerprint": ckpt.fingerprint, **meta, "checkpoint": str(args.checkpoint),
        "checkpoint_epoch": ckpt.config.get("epoch"), "min_count": args.min_count, "words": n_words,
        "ranking": "empirical-Bayes shrunk mean (column shrunk); the plain mean is the column mean",
        "agreement_with_log_count_ratio": reference,
        "top_positive": [s.word for s in words[: args.top]], "top_negative": [s.word for s in words[::-1][: args.top]],
        "top_total_positive": [s.word for s in by_total[: args.top]],
        "top_total_negative": [s.word for s in by_total[::-1][: args.top]],
        "special": [asdict(s) for s in stats if s.kind == "special"]})
    print(f"{n_words} words seen >= {args.min_count} times in {meta['reviews']} reviews ({meta['source']})")
    print("most positive (shrunk mean): " + ", ".join(f"{s.word} {s.shrunk:+.4f}" for s in words[:8]))
    print("most negative (shrunk mean): " + ", ".join(f"{s.word} {s.shrunk:+.4f}" for s in words[::-1][:8]))
    print("largest total effect: " + ", ".join(f"{s.word} {s.total:+.1f}" for s in by_total[:4] + by_total[::-1][:4]))
    for subset in ("all", "frequent"):
        r = reference[subset]
        if "spearman_shrunk" in r:
            print(f"Spearman with the log-count ratio, {subset} words ({r['words']}): shrunk {r['spearman_shrunk']:.3f}, "
                  f"mean {r['spearman_mean']:.3f}, total {r['spearman_total']:.3f}")
    print(f"wrote {out}/word_importance.csv, .png, .json")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
