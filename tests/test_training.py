import json
import os
import subprocess
import sys

import pytest

from torch_imdb.checkpoint import load_checkpoint
from torch_imdb.errors import UsageError
from torch_imdb.train import main as train_main
from torch_imdb.training import TrainConfig, fit

SMALL = dict(maxlen=16, embed_dim=16, hidden=16, batch_size=32, device="cpu")


def test_training_learns_planted_words(planted_data, tmp_path):
    cfg = TrainConfig(epochs=6, lr=5e-3, data=str(planted_data), seed=0, **SMALL)
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    assert metrics["final_test_accuracy"] >= 0.95, metrics["epochs"]
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    assert load_checkpoint(tmp_path / "ck").config["epoch"] == 6


def test_seed_makes_cpu_runs_repeatable(planted_data, tmp_path):
    cfg = TrainConfig(epochs=1, data=str(planted_data), seed=3, **SMALL)
    a = fit(cfg, tmp_path / "a", log=lambda *_: None)["epochs"][0]
    b = fit(cfg, tmp_path / "b", log=lambda *_: None)["epochs"][0]
    assert (a["train_loss"], a["test_acc"]) == (b["train_loss"], b["test_acc"])


def test_val_fraction_keeps_best_validation_epoch(planted_data, tmp_path):
    cfg = TrainConfig(epochs=3, data=str(planted_data), val_fraction=0.2, **SMALL)
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    best = min(metrics["epochs"], key=lambda r: r["val_loss"])["epoch"]
    assert metrics["checkpoint_epoch"] == best
    assert load_checkpoint(tmp_path / "ck").config["epoch"] == best
    assert metrics["n_val"] == 160 and metrics["n_train"] == 640


def test_cli_writes_checkpoint_and_metrics(planted_data, tmp_path, capsys):
    out, metrics_out = tmp_path / "ck", tmp_path / "res" / "m.json"
    assert train_main(["--epochs", "1", "--maxlen", "16", "--embed-dim", "8", "--hidden", "8",
                       "--data", str(planted_data), "--out", str(out), "--metrics-out", str(metrics_out)]) == 0
    m = json.loads(metrics_out.read_text())
    assert m["config"]["maxlen"] == 16 and m["machine"]["cpu_count"] >= 1 and len(m["epochs"]) == 1
    assert "Test accuracy" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"model.pt", "vocab.json", "config.json", "metrics.json"}


def test_bad_options_are_clear():
    with pytest.raises(UsageError, match="--val-fraction"):
        TrainConfig(val_fraction=1.5).validate()
    with pytest.raises(UsageError, match="--epochs"):
        TrainConfig(epochs=0).validate()


def run_cli(args, env_extra):
    env = {k: v for k, v in os.environ.items() if k != "TORCH_IMDB_DATA"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "torch_imdb.train", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    res = run_cli(["--data", str(tmp_path / "missing")], {})
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: data path") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_hub_unreachable_says_how_to_set_the_path():
    res = run_cli([], {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr
    assert "TORCH_IMDB_DATA" in res.stderr and "Traceback" not in res.stderr


def test_help_documents_every_option():
    res = run_cli(["--help"], {})
    for opt in ("--epochs", "--batch-size", "--max-features", "--maxlen", "--seed", "--device", "--out", "--data",
                "--val-fraction"):
        assert opt in res.stdout


def test_real_data_one_epoch(real_data, tmp_path):
    """Integration: a few hundred real reviews, one epoch, through the whole pipeline."""
    cfg = TrainConfig(epochs=1, data=real_data, train_limit=300, test_limit=200, device="cpu")
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    assert metrics["n_train"] == 300 and metrics["n_test"] == 200
    ck = load_checkpoint(tmp_path / "ck")
    assert 1000 < ck.vocab.size <= 20000  # 300 reviews hold fewer than 20,000 distinct words
    assert ck.vocab.words[0] == "the"
    assert 0.0 <= metrics["final_test_accuracy"] <= 1.0
