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


ARCHS = {"lstm": {}, "gru": dict(cell="gru"), "bilstm2": dict(layers=2, bidirectional=True),
         "lstm-shared-masks": dict(dropout_masks="shared")}


@pytest.mark.parametrize("arch", ARCHS)
def test_training_learns_planted_words(planted_data, tmp_path, arch):
    cfg = TrainConfig.of(epochs=6, lr=5e-3, data=str(planted_data), seed=0, **SMALL, **ARCHS[arch])
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    assert metrics["final_test_accuracy"] >= 0.95, metrics["epochs"]
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.config["epoch"] == 6 and metrics["architecture"] == ck.model.config.describe()
    assert ck.model.config == cfg.model_config(ck.vocab.size)


def test_seed_makes_cpu_runs_repeatable(planted_data, tmp_path):
    cfg = TrainConfig.of(epochs=1, data=str(planted_data), seed=3, **SMALL)
    a = fit(cfg, tmp_path / "a", log=lambda *_: None)["epochs"][0]
    b = fit(cfg, tmp_path / "b", log=lambda *_: None)["epochs"][0]
    assert (a["train_loss"], a["test_acc"]) == (b["train_loss"], b["test_acc"])


def test_val_fraction_keeps_best_validation_epoch(planted_data, tmp_path):
    cfg = TrainConfig.of(epochs=3, data=str(planted_data), val_fraction=0.2, **SMALL)
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
    ("monitor", "loss"), ("lr", 0.0), ("lr", float("nan")), ("cell", "rnn"), ("dropout_masks", "per-step"),
    ("seed", -1), ("seed", 2**40), ("maxlen", 1_000_000), ("hidden", 10**9), ("epochs", 1.5), ("layers", True)])
def test_bad_options_are_clear(option, bad):
    with pytest.raises(UsageError, match="--" + option.replace("_", "-")):
        TrainConfig.of(**{option: bad}).validate()


def test_patience_stops_and_val_acc_chooses(planted_data, tmp_path):
    """Patience 1 stops at the first epoch without improvement; monitor=val_acc keeps the best-accuracy epoch."""
    cfg = TrainConfig.of(epochs=8, lr=5e-2, data=str(planted_data), val_fraction=0.2, patience=1, monitor="val_acc",
                         **SMALL)
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
    res = run_cli(["--help"], {})
    assert res.returncode == 0, res.stderr
    options = [f"--{name.replace('_', '-')}" for name in TrainConfig().options()]
    options += ["--out", "--metrics-out", "--resume"]
    assert len(options) >= 23
    for opt in options:
        assert opt in res.stdout, opt


def test_real_data_one_epoch(real_data, tmp_path):
    """Integration: a few hundred real reviews, one epoch, through the whole pipeline."""
    cfg = TrainConfig.of(epochs=1, data=real_data, train_limit=300, test_limit=200, device="cpu")
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    assert metrics["n_train"] == 300 and metrics["n_test"] == 200
    ck = load_checkpoint(tmp_path / "ck")
    assert 1000 < ck.vocab.size <= 20000  # 300 reviews hold fewer than 20,000 distinct words
    assert ck.vocab.words[0] == "the"
    # one epoch on 300 reviews learns little, but the metric must be a real accuracy over 200 reviews
    assert abs(metrics["final_test_accuracy"] * 200 - round(metrics["final_test_accuracy"] * 200)) < 1e-9
    assert 0.3 <= metrics["final_test_accuracy"] <= 0.8


class Interrupt(Exception):
    pass


def interrupt_at(line_start: str):
    """A log that raises when training prints ``line_start``: a run stopped right after that epoch's metrics."""
    def log(line: str) -> None:
        if line.startswith(line_start):
            raise Interrupt(line)
    return log


@pytest.mark.parametrize("extra", [{}, dict(val_fraction=0.2, patience=2, lr=5e-2)], ids=["last-epoch", "best-val"])
def test_resume_ends_with_the_uninterrupted_weights(planted_data, tmp_path, extra):
    cfg = TrainConfig.of(epochs=5, data=str(planted_data), seed=1, **SMALL, **extra)
    whole = fit(cfg, tmp_path / "whole", log=lambda *_: None)
    assert not (tmp_path / "whole" / "train_state.pt").exists()  # a finished run leaves no state behind
    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "cut", log=interrupt_at("epoch  3/5"))  # epoch 3 ran, its state was not saved
    assert torch_load_epoch(tmp_path / "cut" / "train_state.pt") == 2
    resumed = fit(cfg, tmp_path / "cut", log=lambda *_: None, resume=True)
    assert resumed["resumed_after_epoch"] == 2
    assert resumed["weights_fingerprint"] == whole["weights_fingerprint"]
    assert [r["test_loss"] for r in resumed["epochs"]] == [r["test_loss"] for r in whole["epochs"]]
    assert resumed["checkpoint_epoch"] == whole["checkpoint_epoch"]


def torch_load_epoch(path) -> int:
    import torch

    return torch.load(path, weights_only=True)["epoch"]


def test_resume_refuses_other_settings_and_missing_state(planted_data, tmp_path):
    cfg = TrainConfig.of(epochs=3, data=str(planted_data), **SMALL)
    with pytest.raises(UsageError, match="no killed run to continue"):
        fit(cfg, tmp_path / "ck", log=lambda *_: None, resume=True)
    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "ck", log=interrupt_at("epoch  2/3"))
    other = TrainConfig.of(epochs=3, data=str(planted_data), **{**SMALL, "hidden": 8})
    with pytest.raises(UsageError, match="other settings \\(hidden differ\\)"):
        fit(other, tmp_path / "ck", log=lambda *_: None, resume=True)
    import torch

    state = torch.load(tmp_path / "ck" / "train_state.pt", weights_only=True)
    state["config"] = {("arch" if k == "cell" else k): v for k, v in state["config"].items()}
    torch.save(state, tmp_path / "ck" / "train_state.pt")  # as a run saved it when --cell was --arch
    assert fit(cfg, tmp_path / "ck", log=lambda *_: None, resume=True)["resumed_after_epoch"] == 1
    with pytest.raises(Interrupt):
        fit(cfg, tmp_path / "ck", log=interrupt_at("epoch  2/3"))
    (tmp_path / "ck" / "train_state.pt").write_bytes(b"\x80\x04 not a torch file")
    with pytest.raises(UsageError, match="unreadable"):
        fit(cfg, tmp_path / "ck", log=lambda *_: None, resume=True)


def test_sigkill_at_a_random_moment_then_resume_gives_the_same_weights(planted_data, tmp_path):
    """The acceptance test: SIGKILL a training process at a random moment after its first epoch, resume it."""
    import random
    import signal
    import time

    args = ["--epochs", "30", "--maxlen", "16", "--embed-dim", "16", "--hidden", "16", "--seed", "2",
            "--data", str(planted_data), "--device", "cpu"]
    env = {"OMP_NUM_THREADS": "1"}  # one thread in both runs: the same arithmetic, bit for bit
    whole = run_cli([*args, "--out", str(tmp_path / "whole")], env)
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    full_env = {k: v for k, v in os.environ.items() if k != "TORCH_IMDB_DATA"} | env
    proc = subprocess.Popen([sys.executable, "-m", "torch_imdb.train", *args, "--out", str(cut)], env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cut / "train_state.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0, 0.5))  # anywhere in an epoch, a save included
    assert proc.poll() is None, "the run finished before it could be killed; give it more epochs"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli([*args, "--out", str(cut), "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    assert load_checkpoint(cut).fingerprint == load_checkpoint(tmp_path / "whole").fingerprint
    assert not list(cut.glob(".*.tmp"))  # a save cut short leaves no temporary file once the next one ran


def test_progress_lines_in_a_log(planted_data, tmp_path):
    lines = []
    fit(TrainConfig.of(epochs=1, data=str(planted_data), **SMALL), tmp_path / "ck", log=lines.append)
    from torch_imdb.training import PROGRESS_LINES

    progress = [line for line in lines if "batches, loss" in line]  # pytest's output is no terminal: lines, no bar
    assert PROGRESS_LINES // 2 <= len(progress) < PROGRESS_LINES, lines
    assert progress[0].startswith("epoch 1/1: 3/25 batches, loss 0.69"), lines  # 800 reviews / 32 = 25 batches


def test_a_model_too_large_for_the_machine_is_refused_before_the_data_is_read(tmp_path, monkeypatch):
    """Every setting in range, but together 2.5 billion parameters: one line before anything is built."""
    import torch_imdb.training as training

    monkeypatch.setattr(training, "prepare_data", lambda *a, **k: pytest.fail("the data was prepared"))
    with pytest.raises(UsageError, match=r"up to 2,475,311,105 parameters, more than the 268,435,456"):
        fit(TrainConfig.of(embed_dim=16384, hidden=16384), tmp_path / "ck", log=lambda *_: None)


def test_a_kill_while_the_metrics_are_written_resumes(planted_data, tmp_path, monkeypatch):
    """Killed while metrics.json is being written (its temporary file left behind): the state is still there, and
    --resume finishes the run with the uninterrupted run's weights, metrics and no temporary file."""
    import torch_imdb.training as training

    cfg = TrainConfig.of(epochs=2, data=str(planted_data), seed=3, **SMALL)
    whole = fit(cfg, tmp_path / "whole", log=lambda *_: None)
    cut = tmp_path / "cut"

    def killed(path, metrics):  # half of the file written, as a killed process leaves it, then the kill
        (path.parent / f".metrics.json.{dead_pid()}-x.tmp").write_text('{"config": ')
        raise Interrupt

    monkeypatch.setattr(training, "write_metrics", killed)
    with pytest.raises(Interrupt):
        fit(cfg, cut, log=lambda *_: None)
    assert (cut / "train_state.pt").exists() and not (cut / "metrics.json").exists()
    assert [p.name for p in cut.glob(".metrics.json.*.tmp")]
    monkeypatch.undo()
    resumed = fit(cfg, cut, log=lambda *_: None, resume=True, metrics_out=tmp_path / "m.json")
    assert resumed["weights_fingerprint"] == whole["weights_fingerprint"]
    assert [r["test_loss"] for r in resumed["epochs"]] == [r["test_loss"] for r in whole["epochs"]]
    assert json.loads((cut / "metrics.json").read_text())["weights_fingerprint"] == whole["weights_fingerprint"]
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads((cut / "metrics.json").read_text())
    assert not (cut / "train_state.pt").exists() and not list(cut.glob(".*.tmp"))


def dead_pid() -> int:
    """The number of a process that has ended (a child started and waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_every_model_setting_is_an_option_with_the_models_default():
    """A training run holds its ModelConfig, whose every setting is an option under its own name (the vocabulary's
    cap as --max-features) with the model's default: a setting added to the model reaches the command line and the
    checkpoint, or this fails."""
    from dataclasses import fields

    from torch_imdb.config import ModelConfig
    from torch_imdb.train import build_parser

    options = TrainConfig().options()
    model = {f.name: f.default for f in fields(ModelConfig)}
    assert {name: options["max_features" if name == "vocab_size" else name] for name in model} == model
    parsed = vars(build_parser().parse_args(["--arch", "gru", "--hidden", "7"]))  # --arch: --cell's older name
    assert {name: parsed[name] for name in options} == {**options, "cell": "gru", "hidden": 7}
    run = TrainConfig.of(hidden=7, cell="gru", pool="mean", architecture="rnn", layers=2, max_features=500, epochs=2)
    custom = run.model_config(99)
    assert (custom.hidden, custom.cell, custom.pool, custom.layers, custom.vocab_size) == (7, "gru", "mean", 2, 99)
    assert run.epochs == 2 and run.model.vocab_size == 500 and TrainConfig.of(**run.options()) == run
