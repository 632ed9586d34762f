"""Explain sampled test reviews with several engines and compare them.

``explain_reviews`` samples the background from the train split and the
reviews from the test split (seeded: both splits are ordered negatives first),
runs each engine, and returns an :class:`Explanation` that the writers turn
into the CSV, the summary JSON and the figures under ``results/``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from torch_imdb.checkpoint import Checkpoint
from torch_imdb.data import PAD_ID, PAD_WORD, Vocab
from torch_imdb.errors import UsageError
from torch_imdb.explain.api import Attribution
from torch_imdb.explain.backends import plain_rnn_failures
from torch_imdb.explain.engines import make_engine
from torch_imdb.io import atomic_path, atomic_write_json
from torch_imdb.sampling import sample_background, sample_test_reviews

@dataclass
class Explanation:
    """Everything one explain run produced; ``results`` maps engine name to its attributions."""

    ids: np.ndarray  # (N, T) token ids of the explained reviews
    words: list[list[str]]  # (N, T) the word at each position
    labels: list  # true label per review (None for user text)
    sources: list[str]  # where each review came from ("test[123]" or "--text")
    background_rows: list[int]
    results: dict[str, Attribution]
    config: dict = field(default_factory=dict)
    plain_rnn: dict | None = None
    attention: np.ndarray | None = None  # (N, T) the model's attention weights, for an attention model


def encode_texts(texts: list[str], vocab: Vocab, maxlen: int) -> np.ndarray:
    """Encode user-typed reviews; an empty or blank text is an error, unknown words become <unk>."""
    for k, text in enumerate(texts):
        if not text or not text.strip():
            raise UsageError(f"--text number {k + 1} is empty; give the review's words in quotes")
    return vocab.encode_many(texts, maxlen)


def explain_reviews(ckpt: Checkpoint, dataset, background: int = 100, reviews: int = 10, seed: int = 0,
                    engines: tuple[str, ...] = ("shap", "captum"), texts: list[str] | None = None,
                    cache_dir: str | Path | None = None, with_plain_rnn: bool = True) -> Explanation:
    """Sample, encode and explain; see the module docstring.

    Background: ``background`` rows of the train split drawn with ``seed``;
    reviews: ``reviews`` rows of the test split drawn with ``seed + 1``, or the
    given ``texts`` instead.
    """
    bg_rows, bg_ids = sample_background(ckpt, dataset, background, seed, cache_dir)
    if texts:
        ids = encode_texts(texts, ckpt.vocab, ckpt.maxlen)
        labels, sources = [None] * len(texts), ["--text"] * len(texts)
    else:
        rows, ids, y = sample_test_reviews(ckpt, dataset, reviews, seed, cache_dir)
        labels, sources = [int(v) for v in y], [f"test[{int(r)}]" for r in rows]
    x, bg = torch.from_numpy(ids), torch.from_numpy(bg_ids)
    results = {}
    for name in engines:
        results[name] = make_engine(name, ckpt.model).attribute(x, bg)
    plain = plain_rnn_failures(ckpt.model, x, bg) if with_plain_rnn else None
    config = {"background": background, "reviews": len(ids), "seed": seed, "engines": list(engines),
              "background_seed": seed, "reviews_seed": seed + 1, "maxlen": ckpt.maxlen,
              "checkpoint_epoch": ckpt.config.get("epoch"), "checkpoint_seed": ckpt.config.get("seed"),
              "architecture": ckpt.model.config.describe(), "model": ckpt.model.config.to_dict(),
              "weights_fingerprint": ckpt.fingerprint}
    attention = ckpt.model.attention_weights(x).double().numpy() if ckpt.model.config.pool == "attention" else None
    return Explanation(ids, [ckpt.vocab.decode(r) for r in ids], labels, sources, [int(r) for r in bg_rows],
                       results, config, plain, attention)


def attention_vs_attributions(ex: Explanation, engine: str) -> dict:
    """How the attention weights rank a review's tokens next to the exact attributions' |values|.

    Over each review's tokens (padding excluded): Spearman correlation of attention with |value|,
    and whether the top token by attention is the top token by |value|.
    """
    from torch_imdb.faithfulness import spearman

    values = ex.results[engine].values
    rho, same_top = [], []
    for n in range(len(ex.ids)):
        keep = ex.ids[n] != PAD_ID
        att, mag = ex.attention[n][keep], np.abs(values[n][keep])
        rho.append(spearman(att, mag))
        same_top.append(bool(np.argmax(att) == np.argmax(mag)))
    return {"engine": engine, "spearman_attention_vs_abs_value": rho, "mean_spearman": float(np.mean(rho)),
            "top_token_same": same_top, "top_token_same_fraction": float(np.mean(same_top))}


def top_tokens(values: np.ndarray, words: list[str], ids: np.ndarray, k: int = 5) -> list[dict]:
    """The k tokens with the largest |attribution|, padding excluded."""
    order = [int(t) for t in np.argsort(-np.abs(values)) if ids[t] != PAD_ID][:k]
    return [{"position": t, "word": words[t], "value": float(values[t])} for t in order]


def _json_number(v):
    """A float, or a list for per-review base values (models with masks from the ids)."""
    return float(v) if np.ndim(v) == 0 else [float(x) for x in v]


def summarize(ex: Explanation, machine: dict | None = None) -> dict:
    """The summary JSON: outputs, expected value, completeness, agreement, top tokens, timings."""
    names = list(ex.results)
    first = ex.results[names[0]]
    per_engine = {}
    for name, r in ex.results.items():
        entry = {"seconds": r.seconds, "seconds_per_review": r.seconds / len(r.values),
                 "expected_value": _json_number(r.expected_value),
                 "completeness_tolerance": r.extra.get("completeness_tolerance"),
                 "max_completeness_ratio": r.extra.get("completeness_ratio"),
                 "max_abs_completeness_residual": float(np.abs(r.residual).max()),
                 "mean_abs_completeness_residual": float(np.abs(r.residual).mean())}
        if "max_abs_delta" in r.extra:
            entry["captum_max_abs_convergence_delta"] = float(r.extra["max_abs_delta"].max())
        per_engine[name] = entry
    agreement = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            va, vb = ex.results[a].values, ex.results[b].values
            agreement[f"{a}_vs_{b}"] = {"max_abs_diff": float(np.abs(va - vb).max()),
                                        "mean_abs_diff": float(np.abs(va - vb).mean()),
                                        "correlation": float(np.corrcoef(va.ravel(), vb.ravel())[0, 1])}
    reviews = []
    for n in range(len(ex.ids)):
        entry = {"source": ex.sources[n], "label": ex.labels[n], "output": float(first.outputs[n]),
                 "expected_value": first.base_value(n),
                 "text_tail": " ".join(w for w in ex.words[n] if w != PAD_WORD)}
        for name, r in ex.results.items():
            entry[f"top5_{name}"] = top_tokens(r.values[n], ex.words[n], ex.ids[n])
            entry[f"residual_{name}"] = float(r.residual[n])
        if ex.attention is not None:
            entry["top5_attention"] = top_tokens(ex.attention[n], ex.words[n], ex.ids[n])
        reviews.append(entry)
    return {"weights_fingerprint": ex.config.get("weights_fingerprint"), "config": ex.config,
            "expected_value": _json_number(first.expected_value), "engines": per_engine,
            "agreement": agreement, "plain_nn_rnn": ex.plain_rnn, "reviews": reviews,
            "attention_vs_attributions": attention_vs_attributions(ex, names[0]) if ex.attention is not None else None,
            "background_train_rows": ex.background_rows, "machine": machine or {}}


def write_csv(path: str | Path, ex: Explanation) -> None:
    """One row per (review, position): word, id, each engine's value, and differences to the first engine."""
    names = list(ex.results)
    header = ["review", "source", "position", "word", "token_id"] + names + [f"{n}_minus_{names[0]}" for n in names[1:]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for n in range(len(ex.ids)):
            for t in range(ex.ids.shape[1]):
                vals = [ex.results[k].values[n, t] for k in names]
                w.writerow([n, ex.sources[n], t, ex.words[n][t], int(ex.ids[n, t])]
                           + [f"{v:.9g}" for v in vals] + [f"{v - vals[0]:.3g}" for v in vals[1:]])


def write_summary(path: str | Path, summary: dict) -> None:
    atomic_write_json(path, summary)
