"""What an explanation costs: every explainer timed over background size and number of reviews.

For each explained review, shap.DeepExplainer and Captum DeepLiftShap run
forward and backward on 2 x B rows (the review tiled B times, stacked on the
background). This script measures that, on the trained checkpoint (or, if
there is none, a randomly initialised model of the same shape, labelled so):

- a sweep over background sizes at a fixed number of reviews, and a sweep
  over the number of reviews at background 100;
- per point: one warm-up per engine, then repeats; median/min/max seconds,
  seconds per review, rows per second (2 x B x N), extra peak memory;
- a fitted line seconds-per-review = a + b x B per engine;
- a check that all engines agree at one point (max |difference| to shap);
- for the engines that run our recurrent multiplier backward (the fast engines,
  on their own path or the general one), the product floor at the reference
  point: the recurrent matrix products the engine runs there, recorded in its
  untimed run (each pair-step needs one row of one: its multipliers are its own),
  timed alone on this machine, what share of the engine's time they are, and the
  highest ratio to shap any engine running them could reach here (shap's seconds
  per review over the floor's).

Writes results/explainer_speed.json and results/explainer_speed.png.
``--quick`` runs a tiny sweep on a small random model in well under a minute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

from torch_imdb.cli import DEEPSHAP_ENGINES, Parser, answer_help, bounded, checkpoint_options, count, int_list, seed_value
from torch_imdb.config import MAX_REVIEWS, Range
from torch_imdb.errors import UsageError, run_cli

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python benchmarks/explainer_speed.py", description=__doc__, parents=[checkpoint_options()],
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", default=",".join(DEEPSHAP_ENGINES),
                   help=f"comma-separated, from {', '.join(DEEPSHAP_ENGINES)} (default: all; the shapley engine's "
                        "cost is measured by benchmarks/frontier.py)")
    p.add_argument("--backgrounds", type=int_list, default=[10, 25, 50, 100, 200],
                   help="background sizes of the first sweep (default: 10,25,50,100,200)")
    p.add_argument("--reviews", type=count(1, MAX_REVIEWS), default=10,
                   help="reviews explained in the background sweep (default: 10)")
    p.add_argument("--reviews-sweep", type=int_list, default=[1, 10, 50],
                   help="numbers of reviews of the second sweep (default: 1,10,50)")
    p.add_argument("--sweep-background", type=count(1, MAX_REVIEWS), default=100,
                   help="background of the second sweep (default: 100)")
    p.add_argument("--check-background", type=count(1, MAX_REVIEWS), default=None,
                   help="background size at which all engines are compared (default: the smallest)")
    p.add_argument("--repeats", type=count(1, 1000), default=3, help="timed repeats per point (default: 3)")
    p.add_argument("--point-budget", type=bounded(Range(float, 0, 86_400, low_open=True)), default=60.0,
                   help="stop repeating a point once its repeats took this many seconds (default: 60)")
    p.add_argument("--threads", type=count(0, 1024), default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=seed_value, default=0, help="sampling seed (default: 0)")
    p.add_argument("--out", default="results", help="folder for explainer_speed.json/.png (default: results)")
    p.add_argument("--quick", action="store_true", help="tiny sweep on a small random model, under a minute")
    return p


if __name__ == "__main__":
    answer_help(build_parser)  # before the heavy imports below

# Everything below loads torch: --help has been answered above.
import numpy as np  # noqa: E402
import torch  # noqa: E402

from torch_imdb.explain.engines import make_engine  # noqa: E402
from torch_imdb.explain.stack import recorded_products  # noqa: E402
from torch_imdb.io import atomic_savefig, atomic_write_json  # noqa: E402
from torch_imdb.model import ModelConfig, SentimentRNN  # noqa: E402
from torch_imdb.progress import Progress  # noqa: E402


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 5 ms (bytes above the start)."""

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    @property
    def extra_bytes(self) -> int:
        return self.peak - self.start


def load_inputs(args) -> tuple[SentimentRNN, np.ndarray, np.ndarray, dict]:
    """The model, a pool of background ids and of review ids, and what they are."""
    max_b = max(args.backgrounds + [args.sweep_background])
    max_n = max(args.reviews_sweep + [args.reviews])
    if args.quick:
        torch.manual_seed(args.seed)
        model = SentimentRNN(ModelConfig(vocab_size=200, embed_dim=16, hidden=16)).eval()
        g = np.random.default_rng(args.seed)
        return model, g.integers(0, 200, (max_b, 12)), g.integers(0, 200, (max_n, 12)), {
            "model": "random-init small model (quick mode): vocab 200, E=H=16, T=12", "trained": False}
    ckpt_dir = Path(args.checkpoint)
    if (ckpt_dir / "config.json").exists():
        from torch_imdb.checkpoint import load_checkpoint
        from torch_imdb.data import load_imdb
        from torch_imdb.sampling import sample_background, sample_test_reviews

        ckpt = load_checkpoint(ckpt_dir)
        ds = load_imdb(args.data)
        _, bg = sample_background(ckpt, ds, max_b, args.seed, ckpt_dir / "cache")
        _, ids, _ = sample_test_reviews(ckpt, ds, max_n, args.seed, ckpt_dir / "cache")
        return ckpt.model, bg, ids, {"model": f"trained {ckpt.model.config.describe()} {ckpt_dir} (epoch {ckpt.config.get('epoch')})",
                                     "architecture": ckpt.model.config.describe(),
                                     "trained": True, "T": ckpt.maxlen}
    torch.manual_seed(args.seed)
    model = SentimentRNN(ModelConfig()).eval()
    g = np.random.default_rng(args.seed)
    return model, g.integers(0, 20000, (max_b, 80)), g.integers(0, 20000, (max_n, 80)), {
        "model": f"RANDOM-INIT model of the trained shape (no checkpoint at {ckpt_dir}): vocab 20000, E=H=128, T=80",
        "trained": False}


def time_point(engine, ids: torch.Tensor, bg: torch.Tensor, repeats: int, budget_s: float) -> dict:
    """Repeat one (B, N) point up to ``repeats`` times (at least once, fewer past ``budget_s``).

    Peak memory comes from one untimed run before the timed ones: the sampling thread takes
    the GIL and a core every 5 ms, which slowed the timed runs (by about 4% for the fast engine).
    That run also records the recurrent products the engine runs (``_plan``, empty for shap and Captum).
    """
    times, result = [], None
    if getattr(engine, "compiled", False):
        engine.attribute(ids, bg)  # torch.compile specialises on shapes: compile this point's shape untimed
    with PeakRSS() as mem, recorded_products() as plan:
        engine.attribute(ids, bg)
    while len(times) < repeats and (not times or sum(times) < budget_s):
        t0 = time.perf_counter()
        result = engine.attribute(ids, bg)
        times.append(time.perf_counter() - t0)
    n, b = len(ids), len(bg)
    med = statistics.median(times)
    return {"background": b, "reviews": n, "seconds": times, "median_s": med, "min_s": min(times),
            "max_s": max(times), "seconds_per_review": med / n, "rows_per_second": 2 * b * n / med,
            "extra_peak_rss_mb": mem.extra_bytes / 2**20, "peak_rss_mb": mem.peak / 2**20, "_values": result.values,
            "_plan": plan}


def product_floor(plan: list[tuple[int, int, int]], inputs: int, dtype: torch.dtype, device: torch.device,
                  seed: int, repeats: int = 20) -> dict:
    """The matrix products (M, K, N) a fast engine runs to explain ``inputs`` reviews
    (:func:`~torch_imdb.explain.stack.recorded_products`), each shape timed alone on random
    operands: their count, GFLOP and seconds per review, and the rate.

    A floor, so each shape counts its fastest of ``repeats`` runs: on a shared machine the
    median of the same product varies by a quarter from one minute to the next.
    """
    from torch_imdb.explain.onednn import product

    g = torch.Generator(device=device).manual_seed(seed)
    seconds = flop = 0.0
    for (M, K, N), uses in Counter(plan).items():
        a = torch.randn(M, K, generator=g, dtype=dtype, device=device)
        w_t = torch.randn(N, K, generator=g, dtype=dtype, device=device)
        product(a, w_t)  # the first call allocates and picks its kernel
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            product(a, w_t)
            times.append(time.perf_counter() - t0)
        seconds += uses * min(times)
        flop += uses * 2.0 * M * K * N
    return {"products": len(plan), "gflop_per_review": flop / inputs / 1e9,
            "gflop_per_s": flop / seconds / 1e9, "seconds_per_review": seconds / inputs}


def fit_line(points: list[dict]) -> dict | None:
    """Least squares seconds_per_review = a + b x B, with R^2 and the log-log slope (None with < 2 sizes)."""
    B = np.array([p["background"] for p in points], dtype=float)
    if len(set(B)) < 2:
        return None
    y = np.array([p["seconds_per_review"] for p in points])
    b, a = np.polyfit(B, y, 1)
    r2 = 1 - ((y - (a + b * B)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-30)
    slope = np.polyfit(np.log(B), np.log(y), 1)[0]
    return {"a_seconds": float(a), "b_seconds_per_background_row": float(b), "r2": float(r2),
            "loglog_slope": float(slope), "linear": bool(r2 > 0.98)}


def run(args) -> dict:
    from torch_imdb.machine import machine_info

    torch.set_num_threads(args.threads) if args.threads else None
    model, bg_pool, ids_pool, what = load_inputs(args)
    engines = {name: make_engine(name, model) for name in args.engines}
    plan = [(b, args.reviews) for b in args.backgrounds]
    plan += [(args.sweep_background, n) for n in args.reviews_sweep if (args.sweep_background, n) not in plan]
    warm = {}
    for name, engine in engines.items():  # warm-up: imports, hooks, torch.compile
        t0 = time.perf_counter()
        engine.attribute(torch.from_numpy(ids_pool[:1]), torch.from_numpy(bg_pool[: min(args.backgrounds)]))
        warm[name] = time.perf_counter() - t0
    points, check, plans = [], None, {}  # plans: each engine's recurrent products at the reference point
    bar = Progress(len(plan) * len(engines), "benchmark", "points")
    for b, n in plan:
        ids, bg = torch.from_numpy(ids_pool[:n]), torch.from_numpy(bg_pool[:b])
        values = {}
        for name, engine in engines.items():
            p = time_point(engine, ids, bg, args.repeats, args.point_budget)
            values[name], plan = p.pop("_values"), p.pop("_plan")
            if (b, n) == (args.sweep_background, args.reviews):
                plans[name] = plan
            points.append({"engine": name, **p})
            bar.update(1, f"{name} at B={b}, N={n}")
        if (b, n) == (args.check_background, args.reviews) and "shap" in values:
            check = {"background": b, "reviews": n, "max_abs_diff_vs_shap": {
                k: float(np.abs(v - values["shap"]).max()) for k, v in values.items() if k != "shap"}}
    bar.close()
    fits = {name: fit_line([p for p in points if p["engine"] == name and p["reviews"] == args.reviews])
            for name in engines}
    ref = {p["engine"]: p["seconds_per_review"] for p in points
           if p["background"] == args.sweep_background and p["reviews"] == args.reviews}
    ratios = {f"{name}_speedup_vs_shap": ref["shap"] / ref[name] for name in ref if "shap" in ref and name != "shap"}
    floors, timed = {}, {}  # timed: one floor per distinct plan (eager and compiled usually share theirs)
    device = next(model.parameters()).device
    for name, engine in engines.items():
        plan = plans.get(name)
        if not plan:  # no recurrent multiplier backward of ours (shap, Captum), or one-step reviews of ids
            continue
        if tuple(plan) not in timed:
            timed[tuple(plan)] = product_floor(plan, args.reviews, engine.dtype, device, args.seed)
        floor = dict(timed[tuple(plan)])
        floor["share_of_engine_time"] = floor["seconds_per_review"] / ref[name]
        floor["ceiling_vs_shap"] = ref["shap"] / floor["seconds_per_review"] if "shap" in ref else None
        floors[name] = floor
    from torch_imdb.checkpoint import model_fingerprint

    return {"weights_fingerprint": model_fingerprint(model), "what": what, "settings": {k: v for k, v in vars(args).items() if k != "func"},
            "machine": machine_info(), "versions": versions(), "warmup_seconds": warm, "points": points,
            "fits": fits, "agreement": check, "product_floor": floors,
            "at_reference_point": {"background": args.sweep_background, "reviews": args.reviews,
                                   "seconds_per_review": ref, **ratios}}


def versions() -> dict:
    import captum
    import shap

    return {"torch": torch.__version__, "shap": shap.__version__, "captum": captum.__version__}


def print_table(res: dict) -> None:
    print(f"\n{res['what']['model']}")
    print(f"{'engine':>14} {'B':>5} {'N':>4} {'median s':>10} {'min s':>9} {'max s':>9} {'s/review':>9} "
          f"{'rows/s':>9} {'+MB':>7} {'peak MB':>8}")
    for p in res["points"]:
        print(f"{p['engine']:>14} {p['background']:>5} {p['reviews']:>4} {p['median_s']:>10.3f} {p['min_s']:>9.3f} "
              f"{p['max_s']:>9.3f} {p['seconds_per_review']:>9.4f} {p['rows_per_second']:>9.0f} "
              f"{p['extra_peak_rss_mb']:>7.0f} {p['peak_rss_mb']:>8.0f}")
    print("\ncost per explained review = a + b x B")
    for name, f in res["fits"].items():
        if f is None:
            print(f"{name:>14}: (one background size: no line to fit)")
            continue
        print(f"{name:>14}: a = {f['a_seconds']:.4f} s, b = {f['b_seconds_per_background_row'] * 1e3:.3f} ms/row, "
              f"R^2 = {f['r2']:.4f}, log-log slope {f['loglog_slope']:.2f}")
    for k, v in res["at_reference_point"].items():
        if k.endswith("speedup_vs_shap"):
            print(f"{k} at B={res['at_reference_point']['background']}, N={res['at_reference_point']['reviews']}: "
                  f"{v:.1f}x")
    for name, f in res.get("product_floor", {}).items():
        ceiling = f" - no engine running them beats shap by more than {f['ceiling_vs_shap']:.0f}x here" \
            if f["ceiling_vs_shap"] else ""
        print(f"{name}: its {f['products']} recurrent products alone take {f['seconds_per_review'] * 1e3:.2f} ms per "
              f"review ({f['gflop_per_review']:.2f} GFLOP at {f['gflop_per_s']:.0f} GFLOP/s), "
              f"{100 * f['share_of_engine_time']:.0f}% of its time{ceiling}")
    if res["agreement"]:
        print(f"agreement at B={res['agreement']['background']}: {res['agreement']['max_abs_diff_vs_shap']}")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    n = res["settings"]["reviews"]
    for name, fit in res["fits"].items():
        slope = f"log-log slope {fit['loglog_slope']:.2f}" if fit else "one point"
        pts = [p for p in res["points"] if p["engine"] == name and p["reviews"] == n]
        B = [p["background"] for p in pts]
        ax.errorbar(B, [p["seconds_per_review"] for p in pts],
                    yerr=[[(p["median_s"] - p["min_s"]) / n for p in pts], [(p["max_s"] - p["median_s"]) / n for p in pts]],
                    marker="o", capsize=3, label=f"{name} ({slope})")
    ref = res["at_reference_point"]
    floors = {round(f["seconds_per_review"], 12) for f in res.get("product_floor", {}).values()}
    if ref["reviews"] == n:  # the floor is measured at the reference point: on this figure when it has N reviews
        for k, floor in enumerate(sorted(floors)):
            ax.scatter([ref["background"]], [floor], marker="_", s=500, color="black", zorder=3,
                       label=None if k else "fast engine's recurrent products alone (its floor)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("background size B (reference reviews)")
    ax.set_ylabel("seconds per explained review")
    model = textwrap.fill(res["what"]["model"], 90)  # wrapped, never cut: the epoch is at the end
    ax.set_title(f"Explanation cost, N={n} reviews\n{model}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in DEEPSHAP_ENGINES]
    if unknown or not args.engines:
        raise UsageError(f"--engines: unknown {', '.join(unknown) or '(none)'}; choose from "
                         f"{', '.join(DEEPSHAP_ENGINES)}")
    if args.quick:
        args.backgrounds, args.reviews, args.reviews_sweep, args.sweep_background = [4, 8], 2, [1, 2], 8
        args.repeats = min(args.repeats, 2)
        args.engines = [e for e in args.engines if e != "fast-compiled"]  # compiling alone takes ~30 s
    if args.check_background is None:
        args.check_background = min(args.backgrounds)
    res = run(args)
    print_table(res)
    out = Path(args.out)
    atomic_write_json(out / "explainer_speed.json", res)
    plot(res, out / "explainer_speed.png")
    print(f"\nwrote {out / 'explainer_speed.json'} and {out / 'explainer_speed.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
