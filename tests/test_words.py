import csv

import numpy as np
import pytest

from conftest import NEGATIVE, POSITIVE
from torch_imdb.data import Vocab
from torch_imdb.words import main as words_main
from torch_imdb.faithfulness import spearman
from torch_imdb.words import log_count_ratios, shrink, word_importance


def test_shrinkage_is_closer_to_the_truth_and_pulls_noisy_means_most():
    rng = np.random.default_rng(0)
    truth = rng.normal(0.0, 0.1, 2000)
    noise = np.where(np.arange(2000) % 2 == 0, 0.1**2, 0.5**2)  # half the words seen often, half rarely
    means = truth + rng.normal(0.0, np.sqrt(noise))
    est = shrink(list(means), list(noise))
    assert np.mean((est - truth) ** 2) < 0.5 * np.mean((means - truth) ** 2)
    pull = np.abs(est - means) / np.maximum(np.abs(means - est.mean()), 1e-12)
    assert pull[1::2].mean() > pull[0::2].mean()  # noisy means move further
    assert np.allclose(shrink([0.3, 0.3001], [1.0, 1.0]), np.mean([0.3, 0.3001]))  # no spread beyond noise: pooled


def test_spearman_and_log_count_ratio():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)  # ties get average ranks
    vocab = Vocab.build(["good bad plot plot"])
    ratios = log_count_ratios(["good plot", "good good plot", "bad plot"], [1, 1, 0], vocab)
    index = vocab.index()
    assert ratios[index["good"]] > 0 > ratios[index["bad"]]
    # (2 + 1) / (4 + V) vs (1 + 1) / (2 + V) for "plot": both reviews' shares of the word, smoothed
    V = vocab.size
    assert ratios[index["plot"]] == pytest.approx(np.log(3 / (5 + V)) - np.log(2 / (2 + V)))


def test_grouping_by_word_with_specials_apart():
    vocab = Vocab.build(["good bad good"])  # good -> 3, bad -> 4
    ids = np.array([[0, 1, 3, 4, 2], [0, 0, 1, 3, 3]])
    values = np.array([[0.01, 0.0, 0.5, -0.4, 0.1], [0.02, 0.0, 0.0, 0.3, 0.7]])
    stats = word_importance(ids, values, vocab, min_count=1)
    words = [s for s in stats if s.kind == "word"]
    assert [s.word for s in words] == ["good", "bad"]
    good = words[0]
    assert good.occurrences == 3 and good.reviews == 2
    assert good.mean == pytest.approx(0.5) and good.mean_abs == pytest.approx(0.5)
    assert good.ci_low < good.mean < good.ci_high
    special = {s.word: s for s in stats if s.kind == "special"}
    assert set(special) == {"<pad>", "<start>", "<unk>"}
    assert special["<pad>"].occurrences == 3
    assert [s.word for s in word_importance(ids, values, vocab, min_count=2) if s.kind == "word"] == ["good"]


def test_planted_words_come_out_on_top(tmp_path):
    """A model trained on planted sentiment words: those words lead the global ranking with the right signs."""
    from conftest import planted_reviews, write_imdb_folder
    from torch_imdb.training import TrainConfig, fit

    data = write_imdb_folder(tmp_path / "data", {"train": planted_reviews(400, 0), "test": planted_reviews(200, 1)})
    fit(TrainConfig.of(epochs=5, lr=5e-3, maxlen=16, embed_dim=12, hidden=10, data=str(data), device="cpu"),
        tmp_path / "ck", log=lambda *_: None)
    out = tmp_path / "res"
    assert words_main(["--checkpoint", str(tmp_path / "ck"), "--data", str(data), "--sample", "150",
                       "--background", "20", "--min-count", "5", "--out", str(out)]) == 0
    with open(out / "word_importance.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "word"]
    top3, bottom3 = {r["word"] for r in rows[:3]}, {r["word"] for r in rows[-3:]}
    assert top3 == set(POSITIVE) and bottom3 == set(NEGATIVE)
    assert all(float(r["mean"]) > 0 for r in rows[:3]) and all(float(r["mean"]) < 0 for r in rows[-3:])
    assert (out / "word_importance.png").read_bytes()[:4] == b"\x89PNG"
    meta = __import__("json").loads((out / "word_importance.json").read_text())
    assert meta["seed"] == 0 and set(meta["top_positive"][:3]) == set(POSITIVE)
    # the planted words' attributions agree with their model-free polarity in the train split
    assert meta["agreement_with_log_count_ratio"]["all"]["spearman_shrunk"] > 0.2


def test_attributions_from_another_checkpoint_are_refused(tiny_checkpoint, tmp_path):
    import json

    from torch_imdb.errors import UsageError

    ck, data = tiny_checkpoint
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"complete": True, "weights_fingerprint": "not-this-one"}))
    with pytest.raises(UsageError, match="come from other weights"):
        words_main(["--checkpoint", str(ck), "--data", str(data), "--attributions", str(other), "--out", str(tmp_path)])


def test_real_data_words(real_checkpoint, tmp_path):
    """Integration: word importance from a seeded sample of real test reviews."""
    ck, data = real_checkpoint
    assert words_main(["--checkpoint", str(ck), "--data", data, "--sample", "30", "--background", "5",
                       "--min-count", "3", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "word_importance.csv") as fh:
        rows = list(csv.DictReader(fh))
    words = [r for r in rows if r["kind"] == "word"]
    assert len(words) > 20 and all(int(r["occurrences"]) >= 3 for r in words)
    shrunk = [float(r["shrunk"]) for r in words]
    assert shrunk == sorted(shrunk, reverse=True)  # ranked by the shrunk mean
    for r in words:
        assert float(r["total"]) == pytest.approx(float(r["mean"]) * int(r["occurrences"]), rel=1e-4, abs=1e-9)
    assert {r["word"] for r in rows if r["kind"] == "special"} <= {"<pad>", "<start>", "<unk>"}
    meta = __import__("json").loads((tmp_path / "word_importance.json").read_text())
    assert meta["agreement_with_log_count_ratio"]["all"]["words"] == len(words)
