"""``python -m torch_imdb.series``: a time-series regression explained with the fast engine, on a planted signal.

Synthetic sequences (N, T=30, F=4) of standard-normal features; the target is
the sum of feature 2 over the last 5 steps plus a little noise, so exactly 5 of
the 120 (step, feature) cells matter. A float-feature regression model
(features -> LSTM(16) -> Linear(1), identity output) is trained on them, and its
exact DeepSHAP values against a background of training sequences should put
the attribution on those cells: :func:`planted_share` measures that from the
attributions alone. Writes results/series_attributions.png and .json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from torch_imdb.cli import HelpFormatter, Parser, answer_help, count, seed_value
from torch_imdb.errors import UsageError, run_cli

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m torch_imdb.series", description=__doc__,
               formatter_class=HelpFormatter)
    p.add_argument("--train", type=count(2, 100_000), default=2000, help="training sequences")
    p.add_argument("--explain", type=count(1, 100_000), default=200, help="test sequences to explain")
    p.add_argument("--background", type=count(1, 100_000), default=50, help="training sequences in the background")
    p.add_argument("--epochs", type=count(1, 10_000), default=30, help="training epochs")
    p.add_argument("--seed", type=seed_value, default=0,
                   help="seed for the data, the initialisation and the background")
    p.add_argument("--out", default="results", help="folder for series_attributions.png/.json")
    return p


if __name__ == "__main__":
    answer_help(build_parser)  # before the heavy imports below

# Everything below loads torch: --help has been answered above.
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from torch_imdb.io import atomic_savefig, atomic_write_json  # noqa: E402

FEATURES = ["f0", "f1", "f2", "f3"]
PLANTED_FEATURE, PLANTED_LAST = 2, 5  # the target is the sum of f2 over the last 5 steps


def make_series(n: int, seed: int, steps: int = 30, features: int = 4, feature: int = 2, last: int = 5,
                noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, steps, features) ~ N(0, 1); y (n,) = sum of x[:, -last:, feature] + N(0, noise^2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, steps, features, generator=g)
    y = x[:, -last:, feature].sum(dim=1) + noise * torch.randn(n, generator=g)
    return x, y


class SeriesRegressor(nn.Module):
    """Float features (batch, T, F) -> LSTM(H) -> Linear(H, 1) on the final state -> (batch,)."""

    def __init__(self, features: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(x)
        return self.fc(h[-1]).squeeze(-1)


def train_regressor(x: torch.Tensor, y: torch.Tensor, epochs: int = 30, seed: int = 0, hidden: int = 16,
                    lr: float = 1e-2, batch: int = 64) -> tuple[SeriesRegressor, list[float]]:
    """Adam on the mean squared error; returns the model (eval mode) and the loss per epoch."""
    torch.manual_seed(seed)
    model = SeriesRegressor(x.shape[2], hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for k in range(0, len(x), batch):
            idx = order[k : k + batch]
            loss = F.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    return model.eval(), losses


def planted_share(values: np.ndarray, feature: int = 2, last: int = 5) -> dict:
    """From attributions (N, T, F) alone: where the mean |attribution| lies.

    Returns the share of the total on the planted cells, the weakest planted cell's
    mean |value|, and the strongest other cell's (the margin is their ratio).
    """
    mean_abs = np.abs(values).mean(axis=0)  # (T, F)
    planted = np.zeros_like(mean_abs, dtype=bool)
    planted[-last:, feature] = True
    return {"planted_share": float(mean_abs[planted].sum() / mean_abs.sum()),
            "weakest_planted": float(mean_abs[planted].min()), "strongest_other": float(mean_abs[~planted].max()),
            "margin": float(mean_abs[planted].min() / max(mean_abs[~planted].max(), 1e-30))}


def run(n_train: int = 2000, n_explain: int = 200, background: int = 50, epochs: int = 30, seed: int = 0,
        log=lambda line: None) -> dict:
    """Make data, train, explain ``n_explain`` test sequences against ``background`` training ones; return the record."""
    from torch_imdb.checkpoint import model_fingerprint
    from torch_imdb.explain.engines import make_engine
    from torch_imdb.explain.own import RNNParts

    if min(n_train, n_explain, background, epochs) < 1 or background > n_train:
        raise UsageError("--train, --explain, --background and --epochs must be at least 1, and --background <= --train")
    x, y = make_series(n_train, seed)
    x_test, y_test = make_series(n_explain, seed + 1)
    log(f"training the LSTM(16) regressor on {n_train} sequences for {epochs} epochs")
    t0 = time.perf_counter()
    model, losses = train_regressor(x, y, epochs, seed)
    train_s = time.perf_counter() - t0
    log(f"trained in {train_s:.1f} s; explaining {n_explain} test sequences against {background} training sequences "
        "(the fast engine compiles its kernels on the first call)")
    with torch.no_grad():
        test_mse = float(F.mse_loss(model(x_test), y_test))
    bg = x[torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:background]]
    engine = make_engine("fast", RNNParts(model.rnn, model.fc, output="identity"))
    t0 = time.perf_counter()
    exp = engine.explain(x_test, bg, feature_names=FEATURES, output_names=["y"])
    res = engine.attribute(x_test, bg)
    return {"weights_fingerprint": model_fingerprint(model), "seed": seed, "n_train": n_train, "n_explained": n_explain,
            "background": background, "epochs": epochs, "train_seconds": train_s, "train_mse": losses[-1],
            "test_mse": test_mse, "target_variance": float(y_test.var()),
            "explain_seconds": time.perf_counter() - t0,
            "max_abs_completeness_residual": float(np.abs(res.residual).max()),
            **planted_share(res.values), "_values": res.values, "_explanation": exp}


def plot(path: Path, record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean_abs = np.abs(record["_values"]).mean(axis=0)  # (T, F)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [3, 2]})
    im = axes[0].imshow(mean_abs.T, aspect="auto", cmap="magma")
    T = mean_abs.shape[0]
    planted_steps = f"t{T - PLANTED_LAST}-t{T - 1}"
    axes[0].set_yticks(range(len(FEATURES)), [f"{f} (planted at {planted_steps})" if k == PLANTED_FEATURE else f
                                              for k, f in enumerate(FEATURES)])
    axes[0].set_xlabel("time step")
    axes[0].set_title(f"mean |attribution| over {record['n_explained']} test sequences (fast engine)", fontsize=10)
    fig.colorbar(im, ax=axes[0])
    exp = record["_explanation"]
    one = exp[0]
    top = np.argsort(-np.abs(one.values))[:8][::-1]
    axes[1].barh(range(len(top)), one.values[top], color=["#ff0051" if v > 0 else "#008bfb" for v in one.values[top]])
    F_ = len(FEATURES)
    planted = {t * F_ + PLANTED_FEATURE for t in range(T - PLANTED_LAST, T)}  # flattened (t, feature) cells
    axes[1].set_yticks(range(len(top)), [one.feature_names[k] + (" (planted)" if k in planted else "") for k in top],
                       fontsize=8)
    axes[1].axvline(0, color="k", lw=0.6)
    axes[1].set_title(f"sequence 0: f(x) = {one.base_values + one.values.sum():.2f}, E f = {one.base_values:.2f}",
                      fontsize=10)
    fig.suptitle(f"planted: the target is the sum of f2 over the last {PLANTED_LAST} steps. Share of |attribution| on them: "
                 f"{record['planted_share']:.3f}", fontsize=10)
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    record = run(args.train, args.explain, args.background, args.epochs, args.seed,
                 log=lambda line: print(line, flush=True))
    out = Path(args.out)
    plot(out / "series_attributions.png", record)
    atomic_write_json(out / "series_attributions.json", {k: v for k, v in record.items() if not k.startswith("_")})
    print(f"trained in {record['train_seconds']:.1f} s: test MSE {record['test_mse']:.4f} "
          f"(target variance {record['target_variance']:.2f})")
    print(f"share of mean |attribution| on the 5 planted cells: {record['planted_share']:.3f}; weakest planted cell "
          f"{record['weakest_planted']:.3f} vs strongest other {record['strongest_other']:.4f} "
          f"({record['margin']:.0f}x); max completeness residual {record['max_abs_completeness_residual']:.1e}")
    print(f"wrote {out / 'series_attributions.png'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
