"""Are the exact values a good explanation? Every explainer against deletion, insertion, ERASER and Shapley values.

    python benchmarks/faithfulness.py [--reviews 500] [--reference-reviews 100] [--reference shapley|permutation]

On the trained checkpoint, a seeded sample of test reviews and a background of
training reviews, each method gives per-token values (n, T) toward P(positive):

- deepshap_exact: the fast engine (= shap and Captum on the explainable twin);
- deepshap_plain_shap, deepshap_plain_captum: the libraries on the plain nn.LSTM
  (shap with its additivity check off): the values users get today;
- expected_gradients: Captum's GradientShap with the background as baselines
  (integrated gradients in expectation over the background);
- ig_padding: Captum's IntegratedGradients from an all-padding review;
- grad_x_input: gradient times input on the embeddings;
- occlusion: P(x) - P(x with the token replaced by padding);
- lrp: Arras et al.'s LRP (relevance of the logit; 1-layer LSTMs reading their final state);
- attention, attention_norm: the attention weights, and the weights times the norm of
  the RNN output they weigh (attention models only);
- random: standard-normal values, the floor.

Metrics per review (:mod:`torch_imdb.faithfulness`): deletion and insertion AOPC
(k = 1..20), ERASER comprehensiveness and sufficiency, seconds per review, and on
a subset, agreement (Spearman, top-5 overlap, mean |difference|) with
interventional Shapley values over the (smaller) reference background: from the
project's ``shapley`` engine, each review sampled to --reference-reliability
(``--reference shapley``), or from ``shap.PermutationExplainer`` over an
``Independent`` masker, --reference-seeds runs of --permutations permutations
each (``--reference permutation``). Every method in that comparison is
recomputed with the same reference background. The reference's two halves give
its split-half reliability, corrected with Spearman-Brown, and the ceiling that
puts on any method's agreement. Each review's values are cached under --cache in
a folder named by every setting that makes them (weights, background rows,
targets or permutations, versions), so a changed setting is recomputed, never
read back, and an interrupted run resumes.
Every method is also compared with exact DeepSHAP review by review: the paired
difference of each metric with its bootstrap interval.

Writes results/faithfulness.json (every number, settings, seeds, versions),
results/faithfulness.png and results/faithfulness.md (the table docs/results.md shows).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from torch_imdb.cli import Parser, answer_help, checkpoint_options, count, reference_options, sampling_options
from torch_imdb.config import MAX_REVIEWS
from torch_imdb.errors import UsageError, run_cli

METHODS = ("deepshap_exact", "deepshap_plain_shap", "deepshap_plain_captum", "expected_gradients", "ig_padding",
           "grad_x_input", "occlusion", "lrp", "attention", "attention_norm", "random")
REFERENCES = ("shapley", "permutation")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python benchmarks/faithfulness.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               parents=[checkpoint_options(), sampling_options(), reference_options()])
    p.add_argument("--reviews", type=count(1, MAX_REVIEWS), default=500, help="test reviews (seeded sample)")
    p.add_argument("--reference-reviews", type=count(0, MAX_REVIEWS), default=100,
                   help="reviews with a Shapley reference (0: none)")
    p.add_argument("--reference", choices=REFERENCES, default="shapley",
                   help="shapley: the shapley engine, each review sampled to --reference-reliability; permutation: "
                        "shap's PermutationExplainer, --reference-seeds runs of --permutations")
    p.add_argument("--permutations", type=count(1, 10_000), default=10,
                   help="permutations per review and seed for the permutation reference")
    p.add_argument("--reference-seeds", type=count(2, 1000), default=6,
                   help="seeds pooled into the permutation reference (even; its halves measure its convergence)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--out", default="results", help="folder for faithfulness.json/.png")
    return p


if __name__ == "__main__":
    answer_help(build_parser)  # before the heavy imports below

# Everything below loads torch: --help has been answered above.
import numpy as np  # noqa: E402
import torch  # noqa: E402

from torch_imdb.data import PAD_ID  # noqa: E402
from torch_imdb.faithfulness import (aopc, bootstrap_ci, comprehensiveness, deletion_curve,  # noqa: E402
                                     insertion_curve, magnitude_agreement, rank_agreement, split_half_reliability,
                                     sufficiency)
from torch_imdb.io import atomic_save_npy, atomic_savefig, atomic_write_json, atomic_write_text  # noqa: E402
from torch_imdb.progress import Progress  # noqa: E402


def predictor(model):
    """ids (n, T) numpy -> P(positive) (n,) numpy, in eval mode, in batches."""
    def predict(ids: np.ndarray) -> np.ndarray:
        return model.predict_proba(torch.from_numpy(np.asarray(ids, dtype=np.int64)), batch_size=4096).double().numpy()
    return predict


SAMPLE = 500  # reviews drawn for every run, of which --reviews are used


def not_applicable(name: str, model) -> str | None:
    """Why method ``name`` does not apply to ``model``, or None when it does."""
    from torch_imdb.cells import LSTM

    cfg = model.config
    if name == "lrp" and (not LSTM.matches(model.rnn) or cfg.layers != 1 or cfg.bidirectional or cfg.pool != "last"):
        return "LRP is implemented for a 1-layer LSTM that reads its final state"
    if name == "deepshap_plain_shap" and cfg.pool != "last":
        return "shap.DeepExplainer cannot hand the padding mask to a pooled model's plain module"
    if name in ("attention", "attention_norm") and cfg.pool != "attention":
        return "the model has no attention"
    return None


def method_values(name: str, model, ids: np.ndarray, bg: np.ndarray, seed: int) -> np.ndarray:
    """Per-token values (n, T) of method ``name`` for reviews ids (n, T) against background bg (B, T).

    Attention weights are unsigned: they are returned signed toward each review's predicted class, so that
    every metric ranks the tokens by the weights themselves.
    """
    from captum.attr import DeepLiftShap, GradientShap, InputXGradient, IntegratedGradients

    from torch_imdb.explain.backends import PlainFromEmbeddings
    from torch_imdb.explain.engines import make_engine
    from torch_imdb.explain.lrp import lrp_lstm
    from torch_imdb.model import token_mask

    x_ids, bg_ids = torch.from_numpy(ids), torch.from_numpy(bg)
    tokens = token_mask(x_ids)  # the mask the model itself reads
    if name == "deepshap_exact":  # the fast engine (equal to shap and Captum through the transform)
        return make_engine("fast", model).attribute(x_ids, bg_ids).values
    if name in ("attention", "attention_norm"):
        weights = model.attention_weights(x_ids).double()
        if name == "attention_norm":  # attention x the norm of the vector it weighs (the RNN output)
            with torch.no_grad():
                weights = weights * model.rnn(model.embedding(x_ids))[0].double().norm(dim=-1)
        sign = np.where(predictor(model)(ids) >= 0.5, 1.0, -1.0)[:, None]
        return weights.numpy() * sign
    if name == "lrp":
        return lrp_lstm(model, x_ids).double().numpy()
    if name == "random":
        return np.random.default_rng(seed).standard_normal(ids.shape)
    if name == "occlusion":
        predict = predictor(model)
        base = predict(ids)
        out = np.empty(ids.shape)
        for t in range(ids.shape[1]):
            masked = ids.copy()
            masked[:, t] = PAD_ID
            out[:, t] = base - predict(masked)
        return out
    plain = PlainFromEmbeddings(model).eval()
    with torch.no_grad():
        x, r = model.embedding(x_ids), model.embedding(bg_ids)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        if name == "deepshap_plain_shap":
            import shap

            phis = shap.DeepExplainer(plain, r).shap_values(x, check_additivity=False)
            return np.asarray(phis)[..., 0].sum(axis=2)
        # pooled models read the review's padding mask: a constant handed along with the embeddings
        mask = (lambda sl: (tokens[sl],)) if model.config.pool != "last" else (lambda sl: None)
        if name == "deepshap_plain_captum":
            attr = torch.cat([DeepLiftShap(plain).attribute(x[k : k + 1], baselines=r, target=0,
                                                            additional_forward_args=mask(slice(k, k + 1)))
                              for k in range(len(x))])
        elif name == "expected_gradients":  # as many samples as background rows, 5 reviews per call (memory)
            torch.manual_seed(seed)  # Captum draws the baselines with torch
            np.random.seed(seed)  # and the points along each path with numpy's global generator
            attr = torch.cat([GradientShap(plain).attribute(x[k : k + 5], baselines=r, n_samples=len(r), stdevs=0.0,
                                                            target=0, additional_forward_args=mask(slice(k, k + 5)))
                              for k in range(0, len(x), 5)])
        elif name == "ig_padding":
            pad = model.embedding(torch.full_like(x_ids, PAD_ID)).detach()
            attr = IntegratedGradients(plain).attribute(x, baselines=pad, target=0, n_steps=50, internal_batch_size=500,
                                                        additional_forward_args=mask(slice(None)))
        elif name == "grad_x_input":
            attr = InputXGradient(plain).attribute(x.clone().requires_grad_(True), target=0,
                                                   additional_forward_args=mask(slice(None)))
        else:
            raise UsageError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return attr.detach().double().sum(dim=2).numpy()


# Sampling explainers, each at budgets in its own unit: shap's PartitionExplainer over a Text masker (forward rows;
# a masked word becomes padding in place, its own game), shap's PermutationExplainer over the background
# (antithetic permutations), shapiq's KernelSHAP with paired coalitions, sizes drawn by the Shapley kernel
# ("kernel_paired") or uniformly ("leverage": Leverage SHAP's leverage-score sampling), in coalitions of the
# background game, and the project's shapley engine (forward rows).
SAMPLED = {"partition": (100, 400), "permutation": (1, 3), "kernel_paired": (400, 1600), "leverage": (400, 1600),
           "shapley": (8000, 32000)}
UNITS = {"partition": "forward rows", "permutation": "antithetic permutations", "kernel_paired": "coalitions",
         "leverage": "coalitions", "shapley": "forward rows"}


def background_game(predict, x: np.ndarray, bg: np.ndarray):
    """The interventional game of review x (T,) over bg (B, T) as shapiq calls it: coalitions (m, T) bool -> v (m,),
    the mean P(positive) over the background rows with the coalition's tokens taken from x."""
    def game(coalitions: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        rows = np.where(z[:, None, :], x[None, None, :], bg[None]).reshape(-1, x.shape[0])
        return predict(rows).reshape(len(z), len(bg)).mean(axis=1)
    return game


def partition_values(predict, ids: np.ndarray, vocab, budget: int, seed: int) -> np.ndarray:
    """shap's PartitionExplainer with a Text masker over each review's words (padding is not a player): a masked
    word becomes padding in place, so it plays the deletion game, not the background's. Values (n, T)."""
    import shap

    index = {vocab.word(i): i for i in range(min(vocab.size, 3))} | vocab.index()
    T = ids.shape[1]

    def f(texts) -> np.ndarray:
        rows = np.zeros((len(texts), T), dtype=np.int64)
        for r, text in enumerate(texts):
            words = str(text).split(" ")
            rows[r, T - len(words):] = [index.get(w, 0) for w in words]
        return predict(rows)

    masker = shap.maskers.Text(r" ", mask_token=vocab.word(PAD_ID), collapse_mask_token=False)
    out = np.zeros(ids.shape)
    for k, row in enumerate(ids):
        real = np.flatnonzero(row != PAD_ID)
        text = " ".join(vocab.decode(row[real]))
        explainer = shap.PartitionExplainer(f, masker, seed=seed + k)
        out[k, real] = explainer([text], max_evals=budget, silent=True).values[0]
    return out


def sampled_values(name: str, budget: int, model, ids: np.ndarray, bg: np.ndarray, seed: int,
                   vocab=None) -> np.ndarray:
    """Values (n, T) of sampling method ``name`` (a key of SAMPLED) at ``budget`` (its UNITS) against bg."""
    predict = predictor(model)
    if name == "partition":
        return partition_values(predict, ids, vocab, budget, seed)
    if name == "permutation":
        return shapley_reference(predict, ids, bg, budget, seed)
    if name in ("kernel_paired", "leverage"):
        from shapiq.approximator import KernelSHAP

        T = ids.shape[1]
        weights = np.ones(T + 1) if name == "leverage" else None  # None: shapiq's Shapley-kernel sizes
        out = np.zeros(ids.shape)
        for k, x in enumerate(ids):
            approx = KernelSHAP(n=T, pairing_trick=True, sampling_weights=weights, random_state=seed + k)
            out[k] = approx.approximate(budget, background_game(predict, x, bg)).get_n_order_values(1)
        return out
    if name == "shapley":
        from torch_imdb.explain.shapley import ShapleySampling

        with warnings.catch_warnings():  # the budget is the stopping rule here
            warnings.filterwarnings("ignore", "no target")
            engine = ShapleySampling(model, target_reliability=None, target_se=None, max_evaluations=budget, seed=seed)
        return engine.attribute(torch.from_numpy(ids), torch.from_numpy(bg)).values
    raise UsageError(f"unknown sampling method {name!r}; choose from {', '.join(SAMPLED)}")


def reference_key(bg: np.ndarray, permutations: int, model_key: str = "") -> str:
    """The settings that make a reference value, as a folder name: a changed setting never reads old values."""
    import hashlib

    import shap

    h = hashlib.sha256(f"{model_key}|{permutations}|{shap.__version__}|{bg.shape}|".encode())
    h.update(np.ascontiguousarray(bg, dtype=np.int64).tobytes())
    return f"perm{permutations}-bg{len(bg)}-{h.hexdigest()[:16]}"


def review_key(row: int, ids: np.ndarray) -> str:
    """A review's cache name: its row and a hash of its token ids."""
    import hashlib

    return f"row{int(row)}-{hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()[:12]}"


def shapley_reference(predict, ids: np.ndarray, bg: np.ndarray, permutations: int, seed: int,
                      cache: Path | None = None, progress: bool = False, counter: list | None = None,
                      rows: np.ndarray | None = None, model_key: str = "") -> np.ndarray:
    """Interventional Shapley values (n, T) from shap.PermutationExplainer over an Independent masker of bg.

    ``permutations`` antithetic permutations per review (max_evals = permutations * 2 * (T + 1)). Each
    review's values are cached under ``cache/<settings key>/`` (see :func:`reference_key`; ``model_key``
    names the weights), named by seed, the review's ``rows`` entry and its ids, so a restart skips it and
    other settings recompute it. ``counter``, when given, receives the reviews computed (not read back).
    """
    import shap

    T = ids.shape[1]
    masker = shap.maskers.Independent(bg, max_samples=len(bg))
    out = np.empty(ids.shape)
    folder = cache / reference_key(bg, permutations, model_key) if cache else None
    rows = np.arange(len(ids)) if rows is None else rows
    bar = Progress(len(ids), f"Shapley reference (seed {seed})", "reviews", enabled=progress)
    for k in range(len(ids)):
        bar.update(1)
        path = folder / f"seed{seed}-{review_key(rows[k], ids[k])}.npy" if folder else None
        if path is not None and path.exists():
            out[k] = np.load(path)
            continue
        explainer = shap.PermutationExplainer(predict, masker, seed=seed + k)
        out[k] = explainer(ids[k : k + 1], max_evals=permutations * 2 * (T + 1), silent=True).values[0]
        if counter is not None:
            counter.append(k)
        if path is not None:
            atomic_save_npy(path, out[k])
    bar.close()
    return out


REFERENCE_SEED_OFFSET = 10_000  # the engine reference's samples are independent of any method's seed


def engine_reference(model, ids: np.ndarray, rows: np.ndarray, bg: np.ndarray, reliability: float, budget: int,
                     seed: int, cache: Path, fingerprint: str, progress: bool = True) -> dict:
    """The shapley engine's values on ids (n, T), each sampled to split-half ``reliability`` (or ``budget`` forward
    rows): {values, halves (2, n, T), seconds (n,), evaluations (n,), computed, folder}. Each review is cached under
    ``cache``/<settings>/ (the weights' ``fingerprint``, the background, the targets, the seed, torch's version), by
    its ``rows`` entry and ids: a rerun reads it back, a changed setting recomputes it."""
    import hashlib

    from torch_imdb.explain.shapley import ShapleySampling

    seed = seed + REFERENCE_SEED_OFFSET
    h = hashlib.sha256(f"{fingerprint}|{reliability}|{budget}|{seed}|{torch.__version__}|{bg.shape}|".encode())
    h.update(np.ascontiguousarray(bg, dtype=np.int64).tobytes())
    folder = Path(cache) / f"shapley-rel{reliability}-{h.hexdigest()[:16]}" if cache else None
    engine = ShapleySampling(model, target_reliability=reliability, max_evaluations=budget, seed=seed)
    out = {"values": np.zeros(ids.shape), "halves": np.zeros((2, *ids.shape)), "seconds": np.zeros(len(ids)),
           "evaluations": np.zeros(len(ids)), "computed": 0, "folder": str(folder)}
    bar = Progress(len(ids), "converged Shapley reference", "reviews", enabled=progress)
    for k in range(len(ids)):
        path = folder / f"{review_key(rows[k], ids[k])}.npy" if folder else None
        if path is not None and path.exists():
            saved = np.load(path)
        else:
            engine.seed = seed + int(rows[k])  # a review's samples depend on the review, not on its place in a run
            t0 = time.perf_counter()
            res = engine.attribute(torch.from_numpy(ids[k : k + 1]), torch.from_numpy(bg))
            seconds = time.perf_counter() - t0
            saved = np.concatenate([res.values[0], res.extra["halves"][:, 0].ravel(),
                                    [seconds, float(res.extra["evaluations"][0])]])
            if path is not None:
                atomic_save_npy(path, saved)
            out["computed"] += 1
        T = ids.shape[1]
        out["values"][k], out["halves"][:, k] = saved[:T], saved[T : 3 * T].reshape(2, T)
        out["seconds"][k], out["evaluations"][k] = saved[3 * T], saved[3 * T + 1]
        bar.update(1)
    bar.close()
    return out


METRICS = ("deletion_aopc", "deletion_aopc_remove", "insertion_aopc", "comprehensiveness", "comprehensiveness_remove",
           "sufficiency", "sufficiency_remove")
LOWER_IS_BETTER = ("sufficiency", "sufficiency_remove")


def faithfulness_metrics(predict, ids: np.ndarray, values: np.ndarray, max_k: int = 20) -> dict[str, np.ndarray]:
    """Per-review METRICS (``_remove``: tokens deleted and the review re-padded, ERASER's removal; otherwise padding
    written in place) and the deletion curve (n, max_k)."""
    curve = deletion_curve(predict, ids, values, max_k)
    return {"deletion_aopc": aopc(curve),
            "deletion_aopc_remove": aopc(deletion_curve(predict, ids, values, max_k, how="remove")),
            "insertion_aopc": aopc(insertion_curve(predict, ids, values, max_k)),
            "comprehensiveness": comprehensiveness(predict, ids, values),
            "comprehensiveness_remove": comprehensiveness(predict, ids, values, how="remove"),
            "sufficiency": sufficiency(predict, ids, values),
            "sufficiency_remove": sufficiency(predict, ids, values, how="remove"), "_deletion_curve": curve}


def run(args) -> dict:
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import load_imdb
    from torch_imdb.sampling import sample_background, sample_test_reviews
    from torch_imdb.machine import machine_info

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    if not 0 <= args.reference_reviews <= args.reviews or args.reference_background > args.background:
        raise UsageError("--reference-reviews must be within --reviews and --reference-background within --background")
    if args.reference_seeds < 2 or args.reference_seeds % 2 or args.permutations < 1:
        raise UsageError("--reference-seeds must be an even number of at least 2, and --permutations at least 1")
    ckpt = load_checkpoint(args.checkpoint)
    ds = load_imdb(args.data)
    cache_dir = Path(args.checkpoint) / "cache"
    bg_rows, bg = sample_background(ckpt, ds, args.background, args.seed, cache_dir)
    # the first --reviews of one seeded sample of at least SAMPLE: a smaller run's reviews (and its reference's,
    # the first --reference-reviews) are those of a larger one, on every model
    drawn = max(min(SAMPLE, len(ds["test"])), args.reviews)
    rows, ids, labels = sample_test_reviews(ckpt, ds, drawn, args.seed, cache_dir)
    rows, ids, labels = rows[: args.reviews], ids[: args.reviews], labels[: args.reviews]
    predict = predictor(ckpt.model)
    results: dict = {"weights_fingerprint": ckpt.fingerprint, "settings": {k: v for k, v in vars(args).items()},
                     "test_rows": [int(r) for r in rows], "background_train_rows": [int(r) for r in bg_rows],
                     "machine": machine_info(), "methods": {}}
    per_review: dict[str, dict] = {}
    skipped = {m: why for m in methods if (why := not_applicable(m, ckpt.model))}
    methods = [m for m in methods if m not in skipped]
    results["not_applicable"] = skipped
    kept: dict[str, np.ndarray] = {}
    for name in methods:
        print(f"{name} on {len(ids)} reviews", flush=True)
        t0 = time.perf_counter()
        values = kept[name] = method_values(name, ckpt.model, ids, bg, args.seed)
        seconds = time.perf_counter() - t0
        m = faithfulness_metrics(predict, ids, values)
        per_review[name] = m
        results["methods"][name] = {"seconds_per_review": seconds / len(ids),
                                    **{k: bootstrap_ci(v, args.seed) for k, v in m.items() if not k.startswith("_")},
                                    "deletion_curve_mean": m["_deletion_curve"].mean(axis=0).tolist(),
                                    "deletion_curve_ci95": (1.96 * m["_deletion_curve"].std(axis=0, ddof=1)
                                                            / np.sqrt(len(ids))).tolist()}
    if args.reference_reviews:
        n_ref = args.reference_reviews
        ref_bg = bg[: args.reference_background]  # the first rows of the seeded background: itself a seeded sample
        cache = Path(args.cache) if args.cache else None
        if args.reference == "shapley":
            ref = engine_reference(ckpt.model, ids[:n_ref], rows[:n_ref], ref_bg, args.reference_reliability,
                                   args.reference_budget, args.seed, cache, ckpt.fingerprint)
            reference, halves = ref["values"], ref["halves"]
            results["reference"] = {
                "kind": "shapley engine", "reviews": n_ref, "background": len(ref_bg),
                "seed": args.seed + REFERENCE_SEED_OFFSET, "reliability_target": args.reference_reliability,
                "forward_rows_per_review": float(ref["evaluations"].mean()),
                "seconds_per_review": float(ref["seconds"].mean()), "reviews_computed_this_run": ref["computed"],
                "cache": ref["folder"], "convergence": split_half_reliability(*halves, ids[:n_ref])}
        else:
            t0, computed = time.perf_counter(), []
            seeds = [args.seed + j for j in range(args.reference_seeds)]
            refs = [shapley_reference(predict, ids[:n_ref], ref_bg, args.permutations, s, cache, True, computed,
                                      rows[:n_ref], ckpt.fingerprint) for s in seeds]
            seconds = time.perf_counter() - t0
            reference = np.mean(refs, axis=0)
            halves = np.mean(refs[0::2], axis=0), np.mean(refs[1::2], axis=0)
            results["reference"] = {
                "kind": "shap permutation", "reviews": n_ref, "background": len(ref_bg),
                "permutations_per_seed": args.permutations, "seeds": seeds,
                "permutations_per_review": args.permutations * len(seeds),
                "cache_key": reference_key(ref_bg, args.permutations, ckpt.fingerprint),
                "reviews_computed_this_run": len(computed), "read_from_cache": len(seeds) * n_ref - len(computed),
                "seconds_per_computed_review_and_seed": seconds / len(computed) if computed else None,
                "convergence": split_half_reliability(*halves, ids[:n_ref]),
                "seed_vs_seed": {k: bootstrap_ci(v, args.seed) for k, v in rank_agreement(refs[0], refs[1],
                                                                                          ids[:n_ref]).items()}}
        kept["shapley_reference"] = reference
        for name in methods:
            values = method_values(name, ckpt.model, ids[:n_ref], ref_bg, args.seed)
            agree = rank_agreement(values, reference, ids[:n_ref])
            per_review[name]["_agreement"] = agree["spearman"]
            results["methods"][name]["agreement_with_shapley"] = {k: bootstrap_ci(v, args.seed) for k, v in agree.items()}
    if "attention" in kept:  # attention on trial: how its weights rank the tokens against each measure's |values|
        attention = np.abs(kept["attention"])
        results["attention_trial"] = {}
        for other in ("deepshap_exact", "lrp", "ig_padding", "occlusion", "shapley_reference"):
            if other in kept:
                n = len(kept[other])
                agree = magnitude_agreement(attention[:n], kept[other], ids[:n])
                results["attention_trial"][other] = {k: bootstrap_ci(v, args.seed) for k, v in agree.items()}
    if "deepshap_exact" in per_review:  # each method minus exact DeepSHAP, review by review
        exact = per_review["deepshap_exact"]
        for name in methods:
            if name == "deepshap_exact":
                continue
            keys = [k for k in (*METRICS, "_agreement") if k in exact and k in per_review[name]]
            results["methods"][name]["minus_exact"] = {
                k.lstrip("_"): bootstrap_ci(per_review[name][k] - exact[k], args.seed) for k in keys}
    return results


PANELS = [("deletion_aopc", "deletion AOPC (padding in place)"), ("deletion_aopc_remove", "deletion AOPC (removal)"),
          ("insertion_aopc", "insertion AOPC"), ("comprehensiveness", "comprehensiveness"),
          ("sufficiency", "sufficiency (lower is better)"), ("agreement", "Spearman with the Shapley reference")]


def plot(path: Path, res: dict) -> None:
    """One panel per metric: methods sorted best first, the mean and its 95% interval printed on each bar, and for
    the agreement with the reference, the ceiling a noise-free method could reach against it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, t) for k, t in PANELS if k != "agreement" or "reference" in res]
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.6))
    for ax, (key, title) in zip(axes.ravel(), panels):
        stats = {n: (m["agreement_with_shapley"]["spearman"] if key == "agreement" else m.get(key))
                 for n, m in res["methods"].items()}
        stats = {n: v for n, v in stats.items() if v and v.get("mean") is not None}
        names = sorted(stats, key=lambda n: stats[n]["mean"], reverse=key not in LOWER_IS_BETTER)[::-1]
        means = [stats[n]["mean"] for n in names]
        errs = [[stats[n]["mean"] - stats[n]["low"] for n in names], [stats[n]["high"] - stats[n]["mean"] for n in names]]
        colours = ["#ff0051" if n == "deepshap_exact" else "#008bfb" for n in names]
        ax.barh(range(len(names)), means, xerr=errs, color=colours, capsize=2)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        span = max(max(means), 0) - min(min(means), 0) or 1.0
        for y, (m, hi) in enumerate(zip(means, [stats[n]["high"] for n in names])):
            ax.text(max(hi, m) + 0.02 * span, y, f"{m:.3f}", va="center", fontsize=7)
        if key == "agreement":
            conv = res["reference"]["convergence"]
            ax.axvline(conv["ceiling"], color="k", ls="--", lw=0.8)
            ax.text(0.0, 1.01, f"dashed: a noise-free method's ceiling {conv['ceiling']:.3f} (reliability "
                               f"{conv['reliability']:.3f})", transform=ax.transAxes, fontsize=7, va="bottom")
        right = max(max(means), conv["ceiling"] if key == "agreement" else 0, 0)
        ax.set_xlim(min(0, min(means)) - 0.05 * span, right + 0.25 * span)
        ax.set_title(title, fontsize=10, pad=14 if key == "agreement" else 6)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    n_ref = res.get("reference", {}).get("reviews")
    fig.suptitle(f"{len(res['test_rows'])} test reviews" + (f", Shapley reference on {n_ref}" if n_ref else "")
                 + f"; weights {res['weights_fingerprint']}; means with 95% bootstrap intervals", fontsize=10)
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=110)
    plt.close(fig)


def markdown_table(res: dict) -> str:
    """The results as the docs show them: each metric's mean with its interval, and each method minus exact DeepSHAP
    (paired, per review) with its interval."""
    def cell(c, sign=""):  # sign="+" for differences
        return f"{c['mean']:{sign}.3f} [{c['low']:{sign}.3f}, {c['high']:{sign}.3f}]" if c and c.get("mean") is not None \
            else "—"

    keys = [("deletion_aopc", "deletion AOPC"), ("deletion_aopc_remove", "deletion AOPC, removal"),
            ("insertion_aopc", "insertion AOPC"), ("comprehensiveness", "comprehensiveness"),
            ("sufficiency", "sufficiency ↓")]
    has_ref = "reference" in res
    head = ["method", *[t for _, t in keys]] + (["Spearman with Shapley"] if has_ref else []) + ["s/review"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in res["methods"].items():
        row = [f"**{name}**" if name == "deepshap_exact" else name, *[cell(m.get(k)) for k, _ in keys]]
        if has_ref:
            row.append(cell(m.get("agreement_with_shapley", {}).get("spearman")))
        lines.append("| " + " | ".join(row + [f"{m['seconds_per_review']:.4f}"]) + " |")
        if "minus_exact" in m:
            d = m["minus_exact"]
            row = [f"{name} − exact", *[cell(d.get(k), "+") for k, _ in keys]] + (
                [cell(d.get("agreement"), "+")] if has_ref else [])
            lines.append("| " + " | ".join(row + [""]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    out = Path(args.out)
    atomic_write_json(out / "faithfulness.json", res)
    plot(out / "faithfulness.png", res)
    if "reference" in res:
        conv = res["reference"]["convergence"]
        ref = res["reference"]
        cost = (f"{ref['permutations_per_review']} permutations" if "permutations_per_review" in ref else
                f"{ref['forward_rows_per_review']:.0f} forward rows, {ref['seconds_per_review']:.2f} s")
        print(f"reference: {cost} per review; split-half "
              f"{conv['split_half']:.3f}, reliability {conv['reliability']:.3f}, ceiling {conv['ceiling']:.3f}")
    for name, m in res["methods"].items():
        agree = m.get("agreement_with_shapley", {}).get("spearman", {}).get("mean")
        diff = m.get("minus_exact", {}).get("deletion_aopc")
        print(f"{name:>22}: deletion AOPC {m['deletion_aopc']['mean']:.4f} (removal {m['deletion_aopc_remove']['mean']:.4f})"
              f", comprehensiveness {m['comprehensiveness']['mean']:.4f}, sufficiency {m['sufficiency']['mean']:.4f}"
              + (f", Spearman with Shapley {agree:.3f}" if agree is not None else "")
              + (f", deletion minus exact {diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]" if diff else "")
              + f", {m['seconds_per_review']:.4f} s/review")
    atomic_write_text(out / "faithfulness.md", markdown_table(res) + "\n")
    print(f"wrote {out / 'faithfulness.json'}, .png and .md (the table the docs show)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
