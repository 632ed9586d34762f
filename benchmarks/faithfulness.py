"""Are the exact values a good explanation? Every explainer against deletion, insertion, ERASER and Shapley values.

    python benchmarks/faithfulness.py [--reviews 500] [--reference-reviews 100] [--permutations 10]

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
- lrp: Arras et al.'s LRP (relevance of the logit);
- random: standard-normal values, the floor.

Metrics per review (:mod:`torch_imdb.faithfulness`): deletion and insertion AOPC
(k = 1..20), ERASER comprehensiveness and sufficiency, seconds per review, and on
a subset, agreement (Spearman, top-5 overlap, mean |difference|) with
interventional Shapley values from ``shap.PermutationExplainer`` over an
``Independent`` masker of the (smaller) reference background. Every method in
that comparison is recomputed with the same reference background. The reference
is computed twice (seeds S and S+1) to show how far it has converged, and is
cached per review under --cache, so an interrupted run resumes.

Writes results/faithfulness.json (every number, settings, seeds, versions) and
results/faithfulness.png.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from torch_imdb.cli import answer_help, checkpoint_options, sampling_options
from torch_imdb.errors import UsageError, run_cli

METHODS = ("deepshap_exact", "deepshap_plain_shap", "deepshap_plain_captum", "expected_gradients", "ig_padding",
           "grad_x_input", "occlusion", "lrp", "random")

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python benchmarks/faithfulness.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, parents=[checkpoint_options(), sampling_options()])
    p.add_argument("--reviews", type=int, default=500, help="test reviews (seeded sample)")
    p.add_argument("--reference-reviews", type=int, default=100, help="reviews with a Shapley reference (0: none)")
    p.add_argument("--reference-background", type=int, default=20, help="background rows of the Shapley comparison")
    p.add_argument("--permutations", type=int, default=10, help="permutations per review and seed for the reference")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--cache", default="artifacts/faithfulness", help="where reference values are cached per review")
    p.add_argument("--out", default="results", help="folder for faithfulness.json/.png")
    return p


if __name__ == "__main__":
    answer_help(build_parser)  # before the heavy imports below

# Everything below loads torch: --help has been answered above.
import numpy as np  # noqa: E402
import torch  # noqa: E402

from torch_imdb.data import PAD_ID  # noqa: E402
from torch_imdb.faithfulness import (aopc, bootstrap_ci, comprehensiveness, deletion_curve,  # noqa: E402
                                     insertion_curve, rank_agreement, sufficiency)
from torch_imdb.io import atomic_save_npy, atomic_savefig, atomic_write_json  # noqa: E402
from torch_imdb.progress import Progress  # noqa: E402


def predictor(model):
    """ids (n, T) numpy -> P(positive) (n,) numpy, in eval mode, in batches."""
    def predict(ids: np.ndarray) -> np.ndarray:
        return model.predict_proba(torch.from_numpy(np.asarray(ids, dtype=np.int64)), batch_size=4096).double().numpy()
    return predict


def method_values(name: str, model, ids: np.ndarray, bg: np.ndarray, seed: int) -> np.ndarray:
    """Per-token values (n, T) of method ``name`` for reviews ids (n, T) against background bg (B, T)."""
    from captum.attr import DeepLiftShap, GradientShap, InputXGradient, IntegratedGradients

    from torch_imdb.explain.backends import PlainFromEmbeddings
    from torch_imdb.explain.fast import FastDeepShap
    from torch_imdb.explain.lrp import lrp_lstm

    x_ids, bg_ids = torch.from_numpy(ids), torch.from_numpy(bg)
    if name == "deepshap_exact":
        return FastDeepShap(model).attribute(x_ids, bg_ids).values
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
        if name == "deepshap_plain_captum":
            attr = torch.cat([DeepLiftShap(plain).attribute(x[k : k + 1], baselines=r, target=0)
                              for k in range(len(x))])
        elif name == "expected_gradients":  # 50 background samples per review, 10 reviews per call (memory)
            torch.manual_seed(seed)  # Captum draws the baselines with torch
            np.random.seed(seed)  # and the points along each path with numpy's global generator
            attr = torch.cat([GradientShap(plain).attribute(x[k : k + 10], baselines=r, n_samples=50, stdevs=0.0,
                                                            target=0) for k in range(0, len(x), 10)])
        elif name == "ig_padding":
            pad = model.embedding(torch.full_like(x_ids, PAD_ID)).detach()
            attr = IntegratedGradients(plain).attribute(x, baselines=pad, target=0, n_steps=50, internal_batch_size=500)
        elif name == "grad_x_input":
            attr = InputXGradient(plain).attribute(x.clone().requires_grad_(True), target=0)
        else:
            raise UsageError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return attr.detach().double().sum(dim=2).numpy()


def shapley_reference(predict, ids: np.ndarray, bg: np.ndarray, permutations: int, seed: int,
                      cache: Path | None = None, progress: bool = False, counter: list | None = None) -> np.ndarray:
    """Interventional Shapley values (n, T) from shap.PermutationExplainer over an Independent masker of bg.

    ``permutations`` antithetic permutations per review (max_evals = permutations * 2 * (T + 1)); each
    review's values are cached under ``cache`` (named by seed and review index) so a restart skips it.
    ``counter``, when given, receives the number of reviews computed (not read from the cache).
    """
    import shap

    T = ids.shape[1]
    masker = shap.maskers.Independent(bg, max_samples=len(bg))
    out = np.empty(ids.shape)
    bar = Progress(len(ids), f"Shapley reference (seed {seed})", "reviews", enabled=progress)
    for k in range(len(ids)):
        bar.update(1)
        path = cache / f"seed{seed}-review{k:05d}.npy" if cache else None
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


def faithfulness_metrics(predict, ids: np.ndarray, values: np.ndarray, max_k: int = 20) -> dict[str, np.ndarray]:
    """Per-review deletion/insertion AOPC, comprehensiveness, sufficiency, and the deletion curve (n, max_k)."""
    curve = deletion_curve(predict, ids, values, max_k)
    return {"deletion_aopc": aopc(curve), "insertion_aopc": aopc(insertion_curve(predict, ids, values, max_k)),
            "comprehensiveness": comprehensiveness(predict, ids, values),
            "sufficiency": sufficiency(predict, ids, values), "_deletion_curve": curve}


def run(args) -> dict:
    from torch_imdb.checkpoint import load_checkpoint
    from torch_imdb.data import load_imdb
    from torch_imdb.explain.compare import sample_background, sample_test_reviews
    from torch_imdb.training import machine_info

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UsageError(f"--methods: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(METHODS)}")
    if not 0 <= args.reference_reviews <= args.reviews or args.reference_background > args.background:
        raise UsageError("--reference-reviews must be within --reviews and --reference-background within --background")
    ckpt = load_checkpoint(args.checkpoint)
    ds = load_imdb(args.data)
    cache_dir = Path(args.checkpoint) / "cache"
    bg_rows, bg = sample_background(ckpt, ds, args.background, args.seed, cache_dir)
    rows, ids, labels = sample_test_reviews(ckpt, ds, args.reviews, args.seed, cache_dir)
    predict = predictor(ckpt.model)
    results: dict = {"weights_fingerprint": ckpt.fingerprint, "settings": {k: v for k, v in vars(args).items()},
                     "test_rows": [int(r) for r in rows], "background_train_rows": [int(r) for r in bg_rows],
                     "machine": machine_info(), "methods": {}}
    per_review: dict[str, dict] = {}
    for name in methods:
        print(f"{name} on {len(ids)} reviews", flush=True)
        t0 = time.perf_counter()
        values = method_values(name, ckpt.model, ids, bg, args.seed)
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
        cache = Path(args.cache) / ckpt.fingerprint if args.cache else None
        t0, computed = time.perf_counter(), []
        refs = [shapley_reference(predict, ids[:n_ref], ref_bg, args.permutations, s, cache, True, computed)
                for s in (args.seed, args.seed + 1)]
        seconds = time.perf_counter() - t0
        reference = (refs[0] + refs[1]) / 2
        conv = rank_agreement(refs[0], refs[1], ids[:n_ref])
        results["reference"] = {"reviews": n_ref, "background": len(ref_bg), "permutations_per_seed": args.permutations,
                                "seeds": [args.seed, args.seed + 1],
                                "reviews_computed_this_run": len(computed), "read_from_cache": 2 * n_ref - len(computed),
                                "seconds_per_computed_review_and_seed": seconds / len(computed) if computed else None,
                                "seed_vs_seed": {k: bootstrap_ci(v, args.seed) for k, v in conv.items()}}
        for name in methods:
            values = method_values(name, ckpt.model, ids[:n_ref], ref_bg, args.seed)
            agree = rank_agreement(values, reference, ids[:n_ref])
            results["methods"][name]["agreement_with_shapley"] = {k: bootstrap_ci(v, args.seed) for k, v in agree.items()}
    return results


def plot(path: Path, res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for name in names:
        curve = np.array(res["methods"][name]["deletion_curve_mean"])
        band = np.array(res["methods"][name]["deletion_curve_ci95"])
        k = np.arange(1, len(curve) + 1)
        axes[0].plot(k, curve, marker="o", ms=2.5, label=name)
        axes[0].fill_between(k, curve - band, curve + band, alpha=0.15)
    axes[0].set_xlabel("top-k tokens replaced by padding")
    axes[0].set_ylabel("drop in P(predicted class), mean over reviews")
    axes[0].set_title(f"deletion curves, {len(res['test_rows'])} reviews, 95% bands (higher is more faithful)",
                      fontsize=10)
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    with_ref = [n for n in names if "agreement_with_shapley" in res["methods"][n]]
    if with_ref:
        rho = [res["methods"][n]["agreement_with_shapley"]["spearman"] for n in with_ref]
        y = np.arange(len(with_ref))
        axes[1].barh(y, [r["mean"] for r in rho], xerr=[[r["mean"] - r["low"] for r in rho],
                                                         [r["high"] - r["mean"] for r in rho]], color="#008bfb", capsize=3)
        axes[1].set_yticks(y, with_ref, fontsize=8)
        itself = res["reference"]["seed_vs_seed"]["spearman"]["mean"]
        axes[1].axvline(itself, color="k", ls="--", lw=0.8)
        axes[1].text(itself, len(with_ref) - 0.4, " reference seed vs seed", fontsize=7, va="bottom", ha="right")
        axes[1].set_xlabel("Spearman correlation with the Shapley reference (95% interval)")
        axes[1].set_title(f"agreement with interventional Shapley values ({res['reference']['reviews']} reviews)",
                          fontsize=10)
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    out = Path(args.out)
    atomic_write_json(out / "faithfulness.json", res)
    plot(out / "faithfulness.png", res)
    for name, m in res["methods"].items():
        agree = m.get("agreement_with_shapley", {}).get("spearman", {}).get("mean")
        print(f"{name:>22}: deletion AOPC {m['deletion_aopc']['mean']:.4f}, comprehensiveness "
              f"{m['comprehensiveness']['mean']:.4f}, sufficiency {m['sufficiency']['mean']:.4f}"
              + (f", Spearman with Shapley {agree:.3f}" if agree is not None else "")
              + f", {m['seconds_per_review']:.4f} s/review")
    print(f"wrote {out / 'faithfulness.json'} and {out / 'faithfulness.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
