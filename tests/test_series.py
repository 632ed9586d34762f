import json

import numpy as np

from torch_imdb.series import main as series_main
from torch_imdb.series import make_series, planted_share


def test_planted_share_measures_where_attribution_lies():
    values = np.zeros((4, 30, 4))
    values[:, -5:, 2] = 1.0
    values[:, 0, 0] = 0.1
    share = planted_share(values)
    assert share["planted_share"] == 5 / 5.1 and share["margin"] == 10.0


def test_make_series_plants_the_signal():
    x, y = make_series(100, seed=3)
    np.testing.assert_allclose(y.numpy(), x[:, -5:, 2].sum(1).numpy(), atol=0.3)


def test_example_end_to_end_finds_the_planted_steps(tmp_path, capsys):
    """Train, explain with the fast engine, and find the planted cells from the attributions alone."""
    assert series_main(["--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "series_attributions.json").read_text())
    assert record["test_mse"] < 0.1 * record["target_variance"]  # the model learned the signal
    assert record["planted_share"] > 0.75, record
    assert record["weakest_planted"] > 3 * record["strongest_other"], record  # every planted cell beats every other
    assert record["max_abs_completeness_residual"] < 1e-5 and record["weights_fingerprint"]
    assert (tmp_path / "series_attributions.png").read_bytes()[:4] == b"\x89PNG"
    assert "planted cells" in capsys.readouterr().out
