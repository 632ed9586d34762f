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


ARCHS = {"lstm": {}, "gru": dict(arch="gru"), "bilstm2": dict(layers=2, bidirectional=True),
         "lstm-shared-masks": dict(dropout_masks="shared")}


@pytest.mark.parametrize("arch", ARCHS)
def test_training_learns_planted_words(planted_data, tmp_path, arch):
    cfg = TrainConfig(epochs=6, lr=5e-3, data=str(planted_data), seed=0, **SMALL, **ARCHS[arch])
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    assert metrics["final_test_accuracy"] >= 0.95, metrics["epochs"]
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.config["epoch"] == 6 and metrics["architecture"] == ck.model.config.describe()
    assert ck.model.config == cfg.model_config(ck.vocab.size)


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
    fingerprint = load_checkpoint(out).fingerprint
    assert m["weights_fingerprint"] == fingerprint
    assert {p.name for p in out.iterdir()} >= {f"model-{fingerprint}.pt", "config.json", "metrics.json"}


@pytest.mark.parametrize("option,bad", [
    ("val_fraction", 1.5), ("epochs", 0), ("batch_size", 0), ("layers", 0), ("dropout", 1.0), ("recurrent_dropout", -0.1),
    ("monitor", "loss"), ("lr", 0.0), ("lr", float("nan")), ("arch", "rnn"), ("dropout_masks", "per-step")])
def test_bad_options_are_clear(option, bad):
    with pytest.raises(UsageError, match="--" + option.replace("_", "-")):
        TrainConfig(**{option: bad}).validate()


def test_patience_stops_and_val_acc_chooses(planted_data, tmp_path):
    """Patience 1 stops at the first epoch without improvement; monitor=val_acc keeps the best-accuracy epoch."""
    cfg = TrainConfig(epochs=8, lr=5e-2, data=str(planted_data), val_fraction=0.2, patience=1, monitor="val_acc", **SMALL)
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    rows = metrics["epochs"]
    accs = [r["val_acc"] for r in rows]
    best = max(range(len(accs)), key=lambda k: (accs[k], -k))  # first epoch reaching the maximum
    assert metrics["checkpoint_epoch"] == rows[best]["epoch"] and metrics["selected_by"] == "val_acc"
    # training ran until one epoch failed to beat the best so far, then stopped
    stopped = next(k for k in range(1, len(accs)) if accs[k] <= max(accs[:k]))
    assert len(rows) == stopped + 1 < 8, accs


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
    from dataclasses import fields

    res = run_cli(["--help"], {})
    assert res.returncode == 0, res.stderr
    options = [f"--{f.name.replace('_', '-')}" for f in fields(TrainConfig)] + ["--out", "--metrics-out"]
    assert len(options) >= 23
    for opt in options:
        assert opt in res.stdout, opt


def test_real_data_one_epoch(real_data, tmp_path):
    """Integration: a few hundred real reviews, one epoch, through the whole pipeline."""
    cfg = TrainConfig(epochs=1, data=real_data, train_limit=300, test_limit=200, device="cpu")
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    assert metrics["n_train"] == 300 and metrics["n_test"] == 200
    ck = load_checkpoint(tmp_path / "ck")
    assert 1000 < ck.vocab.size <= 20000  # 300 reviews hold fewer than 20,000 distinct words
    assert ck.vocab.words[0] == "the"
    # one epoch on 300 reviews learns little, but the metric must be a real accuracy over 200 reviews
    assert abs(metrics["final_test_accuracy"] * 200 - round(metrics["final_test_accuracy"] * 200)) < 1e-9
    assert 0.3 <= metrics["final_test_accuracy"] <= 0.8
