"""Figures and shap plots as a person sees them: the text Explanation of the fast engine in a browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_imdb.data import Vocab
from torch_imdb.explain import FastDeepShap
from torch_imdb.model import ModelConfig, SentimentRNN
from torch_imdb.report_check import check_report, find_chromium

TEXTS = ["a superb film", "an awful boring film with a dreadful plot", "superb"]


@pytest.fixture(scope="module")
def explained():
    vocab = Vocab.build(["a superb film an awful boring with dreadful plot"] * 3)
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(vocab_size=vocab.size, embed_dim=8, hidden=6)).eval()
    ids = torch.from_numpy(vocab.encode_many(TEXTS, 12))
    bg = torch.from_numpy(vocab.encode_many(["film plot", "a boring superb film with an awful plot"], 12))
    engine = FastDeepShap(model, dtype=torch.float64, compile=False)
    return model, vocab, ids, bg, engine


@pytest.mark.parametrize("padding", ["merge", "drop", "keep"])
def test_text_explanation_adds_up_with_every_padding_option(explained, padding):
    model, vocab, ids, bg, engine = explained
    exp = engine.explain(ids, bg, vocab=vocab, padding=padding)
    p = model.predict_proba(ids).double().numpy()
    for k in range(len(TEXTS)):
        row = exp[k]
        np.testing.assert_allclose(np.sum(row.values) + row.base_values, p[k], atol=1e-10)
        words = [w.strip() for w in row.data]
        assert all(w.endswith(" ") for w in row.data)  # shap.plots.text joins tokens as given: a sentence
        assert words[-len(TEXTS[k].split()):] == TEXTS[k].split()
        if padding == "merge":
            assert words[0] == f"<pad> x{12 - 1 - len(TEXTS[k].split())}" and len(words) == len(TEXTS[k].split()) + 2
        elif padding == "drop":
            assert words == ["<start>"] + TEXTS[k].split()
        else:
            assert len(words) == 12
    with pytest.raises(Exception, match="padding='none'"):
        engine.explain(ids, bg, vocab=vocab, padding="none")


def test_waterfall_and_bar_show_words_not_padding(explained):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import shap

    model, vocab, ids, bg, engine = explained
    exp = engine.explain(ids, bg, vocab=vocab, padding="drop")
    shap.plots.waterfall(exp[1], show=False)
    labels = " ".join(t.get_text() for t in plt.gca().get_yticklabels())
    plt.close("all")
    assert "awful" in labels and "<pad>" not in labels and "other features" not in labels


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_shap_text_plot_of_the_engine_is_coloured_and_spaced_in_a_browser(explained, tmp_path):
    import shap

    model, vocab, ids, bg, engine = explained
    html = shap.plots.text(engine.explain(ids, bg, vocab=vocab), display=False)
    assert "np.float64" not in html  # the colours are CSS a browser parses, under numpy 2
    page = tmp_path / "text.html"
    page.write_text(f"<html><head><meta charset='utf-8'></head><body>{html}</body></html>", encoding="utf-8")
    res = check_report(page, screenshot=tmp_path / "text.png")
    # every token shap meant to colour shows the right hue; no script error (the report's test, without force plots)
    assert res["nonzero_tokens"] > 5 and res["coloured_tokens"] == res["nonzero_tokens"], res
    assert not res["token_problems"] and not res["script_errors"], res
    assert ">superb </div>" in html  # the word and its space: the tokens read as a sentence
