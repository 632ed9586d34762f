"""Faithfulness metrics for token attributions: do the tokens an explanation ranks first drive the model?

Plain functions on numpy arrays and a ``predict`` callable (token ids (n, T) ->
P(positive) (n,)), so they apply to any explainer's values:

- :func:`deletion_curve` / :func:`insertion_curve`: take out the top-k tokens (by
  attribution toward the predicted class), or keep only them, for k = 1..K, and
  record the predicted class's probability. Two ways to take a token out:
  ``"pad"`` writes padding in its place (the positions of the others stay), and
  ``"remove"`` deletes it and re-pads the review in front (ERASER's removal: the
  others move up); :func:`aopc` is the area over the perturbation curve as Samek
  et al. (2017) define it, 1/(K+1) times the sum over k = 0..K (the k = 0 term is
  0);
- :func:`comprehensiveness` / :func:`sufficiency`: ERASER's (DeYoung et al. 2020)
  AOPC over bins of 1, 5, 10, 20 and 50% of the tokens;
- :func:`rank_agreement`: Spearman correlation, top-k overlap and mean absolute
  error between two explanations of the same review;
- :func:`spearman`: rank correlation with average ranks for ties;
- :func:`bootstrap_ci`: a percentile interval of a mean over reviews (of a paired
  difference, when given the per-review differences of two methods);
- :func:`spearman_brown`, :func:`split_half_reliability`: how far a sampled
  reference has converged, and the ceiling it puts on any method's agreement.

No maintained metrics package fits token ids fed to a plain PyTorch model
(ferret-xai expects a Hugging Face model and tokenizer; Quantus has no NLP
support), so each metric is written here in a few lines.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from torch_imdb.data import PAD_ID

def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return (sums / counts)[inverse]
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


Predict = Callable[[np.ndarray], np.ndarray]
ERASER_BINS = (0.01, 0.05, 0.10, 0.20, 0.50)


def class_probability(predict: Predict, ids: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """P(predicted class) (n,): P(positive) where the class is positive, 1 - P(positive) elsewhere."""
    p = np.asarray(predict(ids), dtype=np.float64)
    return np.where(positive, p, 1.0 - p)


def toward_class(values: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Attributions (n, T) signed toward each review's predicted class."""
    return np.where(positive[:, None], values, -values)


def ranking(ids: np.ndarray, values: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Positions (n, T) of each review from most to least supportive of its predicted class, padding last."""
    score = toward_class(values, positive).astype(np.float64)
    score = np.where(ids == PAD_ID, -np.inf, score)
    return np.argsort(-score, axis=1, kind="stable")


DELETIONS = ("pad", "remove")


def _masked(ids: np.ndarray, order: np.ndarray, counts: np.ndarray, keep: bool, how: str = "pad") -> np.ndarray:
    """Copies of ids with the first ``counts[n]`` ranked positions taken out (keep=False) or kept alone (keep=True).

    ``how="pad"``: padding written in place; ``"remove"``: the tokens deleted and each review re-padded in front
    ('pre' padding, as the model was trained), so the remaining tokens move towards the end.
    """
    if how not in DELETIONS:
        raise ValueError(f"how must be one of {', '.join(DELETIONS)}, got {how!r}")
    n, T = ids.shape
    rank_of = np.empty_like(order)
    rank_of[np.arange(n)[:, None], order] = np.arange(T)[None, :]
    chosen = rank_of < counts[:, None]
    real = ids != PAD_ID
    drop = (real & ~chosen) if keep else (real & chosen)
    padded = np.where(drop, PAD_ID, ids)
    if how == "pad":
        return padded
    # a stable sort that puts the taken-out positions (and the padding) first keeps the others in order, at the end
    moved = np.argsort(padded != PAD_ID, axis=1, kind="stable")
    return np.take_along_axis(padded, moved, axis=1)


def deletion_curve(predict: Predict, ids: np.ndarray, values: np.ndarray, max_k: int = 20,
                   how: str = "pad") -> np.ndarray:
    """Drop in P(predicted class) (n, max_k) after taking out the top k tokens, k = 1..max_k (``how``: pad or remove)."""
    positive = np.asarray(predict(ids)) >= 0.5
    base = class_probability(predict, ids, positive)
    order = ranking(ids, values, positive)
    return np.stack([base - class_probability(predict, _masked(ids, order, np.full(len(ids), k), False, how), positive)
                     for k in range(1, max_k + 1)], axis=1)


def insertion_curve(predict: Predict, ids: np.ndarray, values: np.ndarray, max_k: int = 20) -> np.ndarray:
    """Rise in P(predicted class) (n, max_k) when only the top k tokens are kept, over the review with none kept."""
    positive = np.asarray(predict(ids)) >= 0.5
    order = ranking(ids, values, positive)
    empty = class_probability(predict, _masked(ids, order, np.zeros(len(ids), dtype=int), keep=True), positive)
    return np.stack([class_probability(predict, _masked(ids, order, np.full(len(ids), k), keep=True), positive) - empty
                     for k in range(1, max_k + 1)], axis=1)


def aopc(curve: np.ndarray) -> np.ndarray:
    """Area over the perturbation curve per review, Samek et al.'s normalisation: for a (n, K) curve of k = 1..K,
    the sum over k = 0..K divided by K + 1 (the k = 0 term is 0), i.e. K/(K+1) times the mean over k = 1..K."""
    return curve.sum(axis=1) / (curve.shape[1] + 1)


def _eraser(predict: Predict, ids: np.ndarray, values: np.ndarray, keep: bool, bins=ERASER_BINS,
            how: str = "pad") -> np.ndarray:
    positive = np.asarray(predict(ids)) >= 0.5
    base = class_probability(predict, ids, positive)
    order = ranking(ids, values, positive)
    lengths = (ids != PAD_ID).sum(axis=1)
    drops = []
    for q in bins:
        counts = np.maximum(1, np.round(q * lengths)).astype(int)
        drops.append(base - class_probability(predict, _masked(ids, order, counts, keep, how), positive))
    return np.mean(drops, axis=0)


def comprehensiveness(predict: Predict, ids: np.ndarray, values: np.ndarray, bins=ERASER_BINS,
                      how: str = "pad") -> np.ndarray:
    """ERASER comprehensiveness per review: mean drop in P(predicted class) when the top q% tokens are taken out."""
    return _eraser(predict, ids, values, keep=False, bins=bins, how=how)


def sufficiency(predict: Predict, ids: np.ndarray, values: np.ndarray, bins=ERASER_BINS, how: str = "pad") -> np.ndarray:
    """ERASER sufficiency per review: mean drop in P(predicted class) when only the top q% tokens are kept (lower is
    better)."""
    return _eraser(predict, ids, values, keep=True, bins=bins, how=how)


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two 1-d arrays (ties counted as neither concordant nor discordant)."""
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(len(a), k=1)
    da, db = da[upper], db[upper]
    denom = np.sqrt(np.count_nonzero(da) * np.count_nonzero(db))
    return float((da * db).sum() / denom) if denom else float("nan")


def magnitude_agreement(weights: np.ndarray, values: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Per review, over non-padding tokens: how unsigned ``weights`` (attention) rank the tokens against |values|:
    Spearman, Kendall's tau-b, and whether the top token by weight is the top token by |value| (as Jain & Wallace
    2019 compare attention with other importance measures)."""
    rho, tau, top = [], [], []
    for w, v, row in zip(weights, values, ids):
        real = row != PAD_ID
        a, b = w[real], np.abs(v[real])
        ok = len(a) > 1 and a.std() > 0 and b.std() > 0
        rho.append(spearman(a, b) if ok else np.nan)
        tau.append(kendall(a, b) if ok else np.nan)
        top.append(float(np.argmax(a) == np.argmax(b)) if len(a) else np.nan)
    return {"spearman": np.array(rho), "kendall": np.array(tau), "same_top_token": np.array(top)}


def rank_agreement(values: np.ndarray, reference: np.ndarray, ids: np.ndarray, k: int = 5) -> dict[str, np.ndarray]:
    """Per review, over non-padding tokens: Spearman correlation, overlap of the top k by |value|, mean |difference|."""
    rho, overlap, mae = [], [], []
    for v, r, row in zip(values, reference, ids):
        real = row != PAD_ID
        a, b = v[real], r[real]
        rho.append(spearman(a, b) if len(a) > 1 and a.std() > 0 and b.std() > 0 else np.nan)
        kk = min(k, len(a))
        top_a, top_b = set(np.argsort(-np.abs(a))[:kk]), set(np.argsort(-np.abs(b))[:kk])
        overlap.append(len(top_a & top_b) / kk if kk else np.nan)
        mae.append(np.abs(a - b).mean() if len(a) else np.nan)
    return {"spearman": np.array(rho), f"top{k}_overlap": np.array(overlap), "mae": np.array(mae)}


def spearman_brown(r: float, factor: float = 2.0) -> float:
    """The reliability of a measure ``factor`` times as long as one whose reliability is ``r``."""
    return factor * r / (1 + (factor - 1) * r)


def split_half_reliability(half_a: np.ndarray, half_b: np.ndarray, ids: np.ndarray) -> dict:
    """How far a reference averaged from two independent halves (n, T) has converged, over non-padding tokens.

    ``split_half``: the mean per-review Spearman correlation of the two halves;
    ``reliability``: that corrected with Spearman-Brown to the full reference (both halves);
    ``ceiling``: the highest mean correlation a noise-free method can reach against the
    full reference, sqrt(reliability) (Spearman's correction for attenuation).
    """
    r = float(np.nanmean(rank_agreement(half_a, half_b, ids)["spearman"]))
    rel = spearman_brown(r)
    return {"split_half": r, "reliability": rel, "ceiling": float(np.sqrt(max(rel, 0.0)))}


def bootstrap_ci(per_review: np.ndarray, seed: int = 0, resamples: int = 2000, level: float = 0.95) -> dict:
    """Mean over reviews (NaN left out) with a percentile bootstrap interval, resampling reviews with ``seed``."""
    x = np.asarray(per_review, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(x.mean()), "low": float(lo), "high": float(hi), "n": int(len(x))}
