"""Figures: shap force plots over a review's words, and words coloured by attribution.

Padding positions are merged into one feature "<pad> x k" (their attributions
are tiny but not zero: a padded position differs from a background review's
word there), so a force plot still adds up to f(x) - E[f].
"""

from __future__ import annotations

from pathlib import Path

# The backend is left to the caller: a notebook's inline backend shows these figures, and with no display
# matplotlib falls back to Agg by itself; the figures are written with savefig either way.
import matplotlib.pyplot as plt
import numpy as np

from torch_imdb.data import PAD_ID, PAD_WORD
from torch_imdb.errors import UsageError
from torch_imdb.io import atomic_path, atomic_savefig

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


PADDING = ("merge", "drop", "keep")


def readable_text_colours() -> None:
    """Make ``shap.plots.text`` write colours browsers parse, under numpy 2.

    shap 0.51's text plot formats colours as ``rgba{tuple}`` / ``rgb{tuple}`` of
    numpy floats, which numpy 2 prints as ``np.float64(30.0)``: no browser parses
    that, so tokens and the output bar show no colour. The text plot's module gets
    a view of shap's colours that yields plain floats; the rest of shap is left as
    it is. Idempotent.
    """
    from shap.plots import _text

    if isinstance(_text.colors, _PlainColours):
        return
    _text.colors = _PlainColours(_text.colors)


class _PlainRGB:
    """An RGB triple whose product with a number is a tuple of plain floats (``tuple(red_rgb * 255)``)."""

    def __init__(self, rgb) -> None:
        self.rgb = [float(c) for c in rgb]

    def __mul__(self, k: float) -> tuple:
        return tuple(c * k for c in self.rgb)

    def __iter__(self):
        return iter(self.rgb)


class _PlainColours:
    """shap's colours module as the text plot sees it: the same colours, as plain floats."""

    def __init__(self, module) -> None:
        self._module = module
        self.red_rgb, self.blue_rgb = _PlainRGB(module.red_rgb), _PlainRGB(module.blue_rgb)

    def red_transparent_blue(self, *args, **kwargs) -> tuple:
        return tuple(float(c) for c in self._module.red_transparent_blue(*args, **kwargs))

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def token_explanation(values: np.ndarray, base_values, ids: np.ndarray, words: list[list[str]],
                      padding: str = "merge"):
    """Token attributions as a ``shap.Explanation`` that shap's plots show as text.

    values (N, T), base_values a float or (N,), ids (N, T), words N lists of T tokens.
    ``padding``: "merge" sums each review's padding into one leading feature
    ("<pad> x52"), "drop" leaves it out and adds its share to the base value (so
    base + sum(values) is still f(x)), "keep" keeps every position. Tokens carry a
    trailing space, so ``shap.plots.text`` draws a sentence; rows of different
    lengths make a ragged (object) Explanation, as shap's own text explainer does.
    """
    import shap

    if padding not in PADDING:
        raise UsageError(f"padding={padding!r}: choose one of {', '.join(PADDING)}")
    readable_text_colours()
    base = np.broadcast_to(np.asarray(base_values, dtype=np.float64), (len(values),))
    rows_v, rows_w, rows_b = [], [], []
    for v, b, i, w in zip(values, base, ids, words):
        if padding == "keep":
            vals, labels = np.asarray(v, dtype=np.float64), list(w)
        else:
            vals, labels = merge_padding(v, w, i)
            if padding == "drop" and (i == PAD_ID).any():  # the merged padding feature goes into the base value
                b, vals, labels = b + vals[0], vals[1:], labels[1:]
        rows_v.append(vals)
        rows_w.append(labels)
        rows_b.append(float(b))
    if len({len(r) for r in rows_v}) == 1:
        values_out, data, names = np.stack(rows_v), np.array([[t + " " for t in r] for r in rows_w], dtype=object), rows_w[0]
    else:
        values_out = np.empty(len(rows_v), dtype=object)
        data = np.empty(len(rows_v), dtype=object)
        names = np.empty(len(rows_v), dtype=object)
        for k, (v, w) in enumerate(zip(rows_v, rows_w)):
            values_out[k], data[k], names[k] = v, np.array([t + " " for t in w], dtype=object), np.array(w, dtype=object)
    return shap.Explanation(values=values_out, base_values=np.array(rows_b), data=data, feature_names=names,
                            output_names="P(positive)")


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
    total = sum(len(lines) + 2 for lines in lines_per) + 2  # + the colour key
    char_in = 0.6 * 9 / 72  # width of one 9-pt monospace character, in inches: x is in characters
    fig = plt.figure(figsize=(char_in * (max_chars + 1), 0.3 * total + 0.3))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, max_chars)
    ax.set_ylim(total, 0)
    ax.axis("off")
    x, y = 0.5, 0.8
    for label, colour, alpha in (("raises P(positive)", POS_COLOR, 0.8), ("lowers P(positive)", NEG_COLOR, 0.8),
                                 ("small effect", POS_COLOR, 0.12)):
        ax.text(x, y, label, fontsize=9, va="center", family="monospace",
                bbox=dict(boxstyle="square,pad=0.15", lw=0, fc=colour, alpha=alpha))
        x += len(label) + 2
    ax.text(x, y, "(opacity: |value| relative to the review's largest)", fontsize=9, va="center", color="#555555")
    y += 2
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
