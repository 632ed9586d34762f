"""benchmarks/frontier.py end to end on a small trained model; the sampling methods of benchmarks/faithfulness.py on a
model whose Shapley values are known; the Pareto front."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


frontier, faith = load("frontier"), load("faithfulness")


class Additive(torch.nn.Module):
    """logit = sum_t w(token_t): P(positive) is not additive, but the logit game's values are known."""

    def __init__(self, vocab: int = 20) -> None:
        super().__init__()
        self.w = torch.nn.Embedding(vocab, 1)

    def forward(self, ids):
        return self.w(ids).sum(dim=(1, 2))

    def predict_proba(self, ids, batch_size: int = 1024):
        with torch.no_grad():
            return torch.sigmoid(self(ids))


@pytest.mark.parametrize("name", ["kernel_paired", "leverage"])
def test_shapiq_kernelshap_on_the_background_game_is_efficient_and_finds_the_largest_token(name):
    torch.manual_seed(0)
    model = Additive()
    g = np.random.default_rng(0)
    ids, bg = g.integers(1, 20, (2, 8)), g.integers(1, 20, (5, 8))
    values = faith.sampled_values(name, 300, model, ids, bg, seed=0)
    predict = faith.predictor(model)
    for k in range(2):  # efficiency: the values add up to v(all) - v(none) of the background game
        game = faith.background_game(predict, ids[k], bg)
        full, empty = game(np.ones((1, 8), bool))[0], game(np.zeros((1, 8), bool))[0]
        assert values[k].sum() == pytest.approx(full - empty, abs=1e-6)
        # the logit's largest per-position swing x_t vs the background is the largest value
        w = model.w.weight.detach().numpy()[:, 0]
        swing = np.abs(w[ids[k]] - w[bg].mean(axis=0))
        assert np.argmax(np.abs(values[k])) == np.argmax(swing)


def test_partition_plays_the_deletion_game_over_the_words_only(tiny_checkpoint):
    from torch_imdb.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint[0])
    T = ck.maxlen
    ids = np.zeros((1, T), dtype=np.int64)
    ids[0, -5:] = [1, 5, 9, 12, 7]
    values = faith.sampled_values("partition", 64, ck.model, ids, ids[:, ::-1].copy(), seed=0, vocab=ck.vocab)
    assert (values[0, :-5] == 0).all()  # padding is not a player
    predict = faith.predictor(ck.model)
    empty = ids.copy()
    empty[0, -5:] = 0  # every word masked: padding in place
    assert values[0].sum() == pytest.approx(predict(ids)[0] - predict(empty)[0], abs=1e-6)


def test_the_pareto_front_keeps_the_points_no_other_beats_on_both_axes():
    def point(seconds, agreement):
        return {"seconds_per_review": seconds, "agreement": {"mean": agreement}}

    pts = {"a": point(0.01, 0.5), "b": point(0.1, 0.4), "c": point(0.2, 0.9), "d": point(3.0, 0.95),
           "e": point(5.0, 0.93)}
    assert frontier.pareto(pts) == ["a", "c", "d"]


def test_points_parse_names_and_budgets(tiny_model):
    from torch_imdb.errors import UsageError

    assert frontier.points(tiny_model, "shapley@500,occlusion,permutation") == [
        ("shapley", 500), ("occlusion", None), ("permutation", 1), ("permutation", 3)]
    for bad in ("lime", "shapley@many"):
        with pytest.raises(UsageError, match="--methods"):
            frontier.points(tiny_model, bad)


def test_frontier_end_to_end(tiny_checkpoint, tmp_path, capsys):
    ck, data = tiny_checkpoint
    argv = ["--checkpoint", str(ck), "--data", str(data), "--reviews", "4", "--frontier-reviews", "3",
            "--background", "5", "--reference-background", "4", "--reference-reliability", "0.9",
            "--methods", "deepshap_exact,occlusion,permutation@1,shapley@2000,partition@40,leverage@60",
            "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert frontier.main(argv) == 0
    res = json.loads((tmp_path / "out" / "frontier.json").read_text())
    assert res["weights_fingerprint"] and res["reference"]["reviews"] == 4 and res["reference"]["computed_this_run"] == 4
    assert set(res["points"]) == {"deepshap_exact", "occlusion", "permutation@1", "shapley@2000", "partition@40",
                                  "leverage@60"}
    for name, p in res["points"].items():
        assert p["seconds_per_review"] > 0 and p["agreement"]["n"] >= 1, name
        assert -1 <= p["agreement"]["low"] <= p["agreement"]["mean"] <= p["agreement"]["high"] <= 1, name
    assert res["pareto_front"] and set(res["pareto_front"]) <= set(res["points"])
    assert 0 < res["reference"]["convergence"]["ceiling"] <= 1
    assert (tmp_path / "out" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "out" / "frontier.md").read_text().splitlines()
    assert len(table) == 2 + len(res["points"]) and any(line.startswith("| **") for line in table[2:])
    assert "Pareto front" in capsys.readouterr().out
    # the reference is cached by its settings: a second run computes nothing
    assert frontier.main(argv) == 0
    assert json.loads((tmp_path / "out" / "frontier.json").read_text())["reference"]["computed_this_run"] == 0
    # --replot redraws the figure and the table from the JSON alone
    written = (tmp_path / "out" / "frontier.md").read_text()
    (tmp_path / "out" / "frontier.png").unlink()
    (tmp_path / "out" / "frontier.md").unlink()
    assert frontier.main(["--replot", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out" / "frontier.md").read_text() == written


def test_bad_settings_are_one_line(tiny_checkpoint, tmp_path):
    from torch_imdb.errors import UsageError

    ck, data = tiny_checkpoint
    with pytest.raises(UsageError, match="--frontier-reviews must be within --reviews"):
        frontier.run(frontier.build_parser().parse_args(["--checkpoint", str(ck), "--data", str(data), "--reviews",
                                                          "2", "--frontier-reviews", "3"]))
    with pytest.raises(UsageError, match="--replot: no"):
        frontier.main(["--replot", "--out", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit):  # argparse's one-line error, walked for every option in test_cli.py
        frontier.build_parser().parse_args(["--reference-reliability", "1.5"])
