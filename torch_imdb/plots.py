"""Figures: shap force plots over a review's words, and words coloured by attribution.

Padding positions are merged into one feature "<pad> x k" (their attributions
are tiny but not zero: a padded position differs from a background review's
word there), so a force plot still adds up to f(x) - E[f].
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from torch_imdb.data import PAD_ID, PAD_WORD  # noqa: E402
from torch_imdb.io import atomic_path, atomic_savefig  # noqa: E402

# shap's colours: red pushes P(positive) up, blue pushes it down.
POS_COLOR, NEG_COLOR = "#ff0051", "#008bfb"


def merge_padding(values: np.ndarray, words: list[str], ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per-token values and labels with all padding positions summed into one leading feature."""
    pad = ids == PAD_ID
    vals = [float(v) for v, p in zip(values, pad) if not p]
    labels = [w for w, p in zip(words, pad) if not p]
    if pad.any():
        vals.insert(0, float(values[pad].sum()))
        labels.insert(0, f"{PAD_WORD} x{int(pad.sum())}")
    return np.asarray(vals), labels


def force_plot(expected_value: float, values: np.ndarray, words: list[str], ids: np.ndarray):
    """shap's additive force plot (JS object) of one review."""
    import shap

    vals, labels = merge_padding(values, words, ids)
    return shap.force_plot(expected_value, vals, feature_names=labels, out_names="P(positive)")


def save_force_html(path: str | Path, plot) -> None:
    """Write a force plot to a self-contained HTML file (shap's JS inlined by ``shap.save_html``)."""
    import shap

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            shap.save_html(fh, plot)


def save_force_png(path: str | Path, expected_value: float, values: np.ndarray, words: list[str], ids: np.ndarray,
                   title: str = "") -> None:
    """shap's matplotlib force plot as a PNG (for the README)."""
    import shap

    vals, labels = merge_padding(values, words, ids)
    shap.force_plot(expected_value, vals, feature_names=np.array(labels), matplotlib=True, show=False,
                    figsize=(18, 3.2), text_rotation=30, out_names="P(positive)", contribution_threshold=0.04)
    fig = plt.gcf()
    if title:  # below the plot: above it, shap's "higher / lower" legend sits where a title would go
        fig.text(0.5, 0.0, title, ha="center", va="top", fontsize=11)
    atomic_savefig(path, fig, dpi=110, bbox_inches="tight")
    plt.close(fig)


def save_token_figure(path: str | Path, reviews: list[dict], max_chars: int = 110) -> None:
    """Words of several reviews on coloured boxes (red up, blue down), the strength as opacity.

    Each review dict: words (T), ids (T), values (T), title. Padding is left out.
    """
    lines_per = []
    for r in reviews:
        keep = [(w, v) for w, i, v in zip(r["words"], r["ids"], r["values"]) if i != PAD_ID]
        lines, line, width = [], [], 0
        for w, v in keep:
            if width + len(w) + 1 > max_chars and line:
                lines.append(line)
                line, width = [], 0
            line.append((w, v))
            width += len(w) + 1
        if line:
            lines.append(line)
        lines_per.append(lines)
    total = sum(len(lines) + 2 for lines in lines_per)
    char_in = 0.6 * 9 / 72  # width of one 9-pt monospace character, in inches: x is in characters
    fig = plt.figure(figsize=(char_in * (max_chars + 1), 0.3 * total + 0.3))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, max_chars)
    ax.set_ylim(total, 0)
    ax.axis("off")
    y = 0.8
    for r, lines in zip(reviews, lines_per):
        scale = max(1e-12, float(np.abs(np.asarray(r["values"])).max()))
        ax.text(0.5, y, r["title"], fontsize=10, fontweight="bold", va="center")
        y += 1
        for line in lines:
            x = 0.5
            for w, v in line:
                alpha = min(1.0, abs(v) / scale)
                ax.text(x, y, w, fontsize=9, va="center", family="monospace",
                        bbox=dict(boxstyle="square,pad=0.15", lw=0,
                                  fc=POS_COLOR if v > 0 else NEG_COLOR, alpha=0.08 + 0.72 * alpha))
                x += len(w) + 1
            y += 1
        y += 1
    atomic_savefig(path, fig, dpi=110)
    plt.close(fig)
