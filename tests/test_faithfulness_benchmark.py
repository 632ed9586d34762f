"""benchmarks/faithfulness.py end to end on a small trained model, and its Shapley reference on an additive model."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "faithfulness.py"
spec = importlib.util.spec_from_file_location("faithfulness_benchmark", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_shapley_reference_of_an_additive_model_is_exact(tmp_path):
    """For f = sum_t w(token_t), interventional Shapley values are w(x_t) - mean_b w(r_bt), whatever the permutations."""
    weights = np.linspace(-1, 1, 20)

    def predict(ids):
        return weights[np.asarray(ids, dtype=np.int64)].sum(axis=1)  # shap hands the masked ids over as floats

    rng = np.random.default_rng(0)
    ids, bg = rng.integers(0, 20, (3, 6)), rng.integers(0, 20, (4, 6))
    exact = weights[ids] - weights[bg].mean(axis=0)
    ref = bench.shapley_reference(predict, ids, bg, permutations=1, seed=0, cache=tmp_path)
    np.testing.assert_allclose(ref, exact, atol=1e-10)
    assert len(list(tmp_path.glob("*/seed0-row*.npy"))) == 3
    # cached: a second call with the same settings reads the files (same values, even with another predict)
    np.testing.assert_allclose(bench.shapley_reference(lambda x: 0 * predict(x), ids, bg, 1, 0, tmp_path), exact)


def test_a_changed_reference_setting_is_recomputed_never_read_back(tmp_path):
    """The cache is keyed by every setting that makes the values: permutations, background, weights, review."""
    weights = np.linspace(-1, 1, 20)
    rng = np.random.default_rng(1)
    ids, bg = rng.integers(0, 20, (3, 6)), rng.integers(0, 20, (4, 6))
    bench.shapley_reference(lambda x: weights[np.asarray(x, dtype=np.int64)].sum(axis=1), ids, bg, 1, 0, tmp_path,
                            model_key="weights-a")
    zero = lambda x: np.zeros(len(x))  # noqa: E731 - a model whose values are all 0: a reused value shows
    for change in (dict(permutations=2), dict(bg=bg[:3]), dict(model_key="weights-b"), dict(rows=np.array([7, 8, 9]))):
        kwargs = dict(permutations=1, bg=bg, model_key="weights-a", rows=None) | change
        computed = []
        got = bench.shapley_reference(zero, ids, kwargs["bg"], kwargs["permutations"], 0, tmp_path, counter=computed,
                                      rows=kwargs["rows"], model_key=kwargs["model_key"])
        assert computed == [0, 1, 2] and np.all(got == 0), change
    computed = []
    bench.shapley_reference(zero, ids, bg, 1, 0, tmp_path, counter=computed, model_key="weights-a")
    assert computed == []  # the same settings again: read back


def test_benchmark_end_to_end(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    assert bench.main(["--checkpoint", str(ck), "--data", str(data), "--reviews", "8", "--background", "5",
                       "--reference-reviews", "3", "--reference-background", "3", "--reference", "permutation",
                       "--permutations", "2",
                       "--reference-seeds", "2",
                       "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "faithfulness.json").read_text())
    assert set(res["methods"]) == set(bench.METHODS) - {"attention", "attention_norm"} and res["weights_fingerprint"]
    assert set(res["not_applicable"]) == {"attention", "attention_norm"}  # the model has no attention
    for name, m in res["methods"].items():
        for key in bench.METRICS:
            assert m[key]["n"] == 8 and m[key]["low"] <= m[key]["mean"] <= m[key]["high"], (name, key)
        assert m["agreement_with_shapley"]["spearman"]["n"] >= 1
        if name != "deepshap_exact":  # paired with exact DeepSHAP, review by review
            d = m["minus_exact"]["deletion_aopc"]
            assert d["n"] == 8 and d["mean"] == pytest.approx(
                m["deletion_aopc"]["mean"] - res["methods"]["deepshap_exact"]["deletion_aopc"]["mean"])
            assert set(m["minus_exact"]) == {*bench.METRICS, "agreement"}
    conv = res["reference"]["convergence"]
    assert 0 < conv["ceiling"] <= 1 and conv["reliability"] == pytest.approx(2 * conv["split_half"] / (1 + conv["split_half"]))
    # on the planted-word model the exact values find the deciding word: deleting their top token
    # moves the prediction more than deleting a random one
    assert res["methods"]["deepshap_exact"]["deletion_aopc"]["mean"] > res["methods"]["random"]["deletion_aopc"]["mean"]
    assert (tmp_path / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "faithfulness.md").read_text()
    assert "| **deepshap_exact** |" in table and "| random − exact |" in table
    assert "deepshap_exact" in capsys.readouterr().out
    # the one-row-per-model summary reads the same JSON: exact DeepSHAP's numbers, the best other method's
    summary_spec = importlib.util.spec_from_file_location("summary", SCRIPT.parent / "faithfulness_summary.py")
    summary = importlib.util.module_from_spec(summary_spec)
    summary_spec.loader.exec_module(summary)
    assert summary.main([str(tmp_path / "faithfulness.json"), "--out", str(tmp_path / "models.md")]) == 0
    row = (tmp_path / "models.md").read_text().splitlines()[2]
    exact = res["methods"]["deepshap_exact"]
    assert row.startswith(f"| ck `{res['weights_fingerprint']}` | 8 (3, 4 permutations) |")
    assert f"{exact['deletion_aopc']['mean']:.3f}; " in row and f"{conv['reliability']:.3f} → " in row
    with pytest.raises(bench.UsageError, match="no such file"):
        summary.main([str(tmp_path / "missing.json")])


def test_attention_weights_as_a_method_equal_the_softmax_by_hand():
    import torch

    from torch_imdb.model import ModelConfig, SentimentRNN

    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(vocab_size=30, embed_dim=6, hidden=5, bidirectional=True, pool="attention",
                                     attention_dim=4)).eval()
    ids = np.array([[0, 0, 1, 5, 9, 12], [1, 3, 4, 20, 7, 8]])
    values = bench.method_values("attention", model, ids, ids[:1], seed=0)
    with torch.no_grad():
        out = model.rnn(model.embedding(torch.from_numpy(ids)))[0]
        scores = model.attn_v(torch.tanh(model.attn(out))).squeeze(-1).double().numpy()
    scores = np.where(ids != 0, scores, -np.inf)
    by_hand = np.exp(scores - scores.max(axis=1, keepdims=True))
    by_hand /= by_hand.sum(axis=1, keepdims=True)
    positive = model.predict_proba(torch.from_numpy(ids)).numpy() >= 0.5
    np.testing.assert_allclose(np.where(positive[:, None], values, -values), by_hand, atol=1e-6)
    assert np.all(values[0, :2] == 0)  # padding gets no attention


def test_benchmark_on_an_attention_model(planted_data, tmp_path):
    from torch_imdb.training import TrainConfig, fit

    fit(TrainConfig.of(epochs=3, lr=5e-3, maxlen=12, embed_dim=8, hidden=6, bidirectional=True, pool="attention",
                    attention_dim=4, data=str(planted_data), device="cpu"), tmp_path / "ck", log=lambda *_: None)
    assert bench.main(["--checkpoint", str(tmp_path / "ck"), "--data", str(planted_data), "--reviews", "6",
                       "--background", "4", "--reference-reviews", "3", "--reference-background", "3",
                       "--permutations", "2", "--reference-seeds", "2", "--cache", str(tmp_path / "cache"),
                       "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "faithfulness.json").read_text())
    # the default reference: the shapley engine (12 words and 3 background rows: every coalition, exact)
    assert res["reference"]["kind"] == "shapley engine" and res["reference"]["reviews_computed_this_run"] == 3
    assert res["reference"]["convergence"]["reliability"] == pytest.approx(1.0)
    assert set(res["not_applicable"]) == {"lrp", "deepshap_plain_shap"}
    assert {"attention", "attention_norm", "deepshap_exact", "deepshap_plain_captum"} <= set(res["methods"])
    trial = res["attention_trial"]
    assert set(trial) == {"deepshap_exact", "ig_padding", "occlusion", "shapley_reference"}
    for other in trial.values():
        assert -1 <= other["kendall"]["mean"] <= 1 and 0 <= other["same_top_token"]["mean"] <= 1


def test_a_smaller_run_explains_the_first_reviews_of_a_larger_one(tiny_checkpoint, tmp_path):
    """--reviews takes the first reviews of one seeded sample, so models run with fewer reviews share theirs."""
    ck, data = tiny_checkpoint
    common = ["--checkpoint", str(ck), "--data", str(data), "--background", "4", "--reference-reviews", "0",
              "--reference-background", "4",
              "--methods", "grad_x_input,random"]
    for n in (6, 3):
        assert bench.main([*common, "--reviews", str(n), "--out", str(tmp_path / str(n))]) == 0
    six, three = (json.loads((tmp_path / str(n) / "faithfulness.json").read_text())["test_rows"] for n in (6, 3))
    assert three == six[:3]
