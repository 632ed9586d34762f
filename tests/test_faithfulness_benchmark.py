"""benchmarks/faithfulness.py end to end on a small trained model, and its Shapley reference on an additive model."""

import importlib.util
import json
from pathlib import Path

import numpy as np

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
    assert len(list(tmp_path.glob("seed0-review*.npy"))) == 3
    # cached: a second call reads the files (same values, even with another predict)
    np.testing.assert_allclose(bench.shapley_reference(lambda x: 0 * predict(x), ids, bg, 1, 0, tmp_path), exact)


def test_benchmark_end_to_end(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    assert bench.main(["--checkpoint", str(ck), "--data", str(data), "--reviews", "8", "--background", "5",
                       "--reference-reviews", "3", "--reference-background", "3", "--permutations", "2",
                       "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "faithfulness.json").read_text())
    assert set(res["methods"]) == set(bench.METHODS) and res["weights_fingerprint"]
    for name, m in res["methods"].items():
        for key in ("deletion_aopc", "insertion_aopc", "comprehensiveness", "sufficiency"):
            assert m[key]["n"] == 8 and m[key]["low"] <= m[key]["mean"] <= m[key]["high"], (name, key)
        assert m["agreement_with_shapley"]["spearman"]["n"] >= 1
    # on the planted-word model the exact values find the deciding word: deleting their top token
    # moves the prediction more than deleting a random one
    assert res["methods"]["deepshap_exact"]["deletion_aopc"]["mean"] > res["methods"]["random"]["deletion_aopc"]["mean"]
    assert (tmp_path / "faithfulness.png").read_bytes()[:4] == b"\x89PNG"
    assert "deepshap_exact" in capsys.readouterr().out
