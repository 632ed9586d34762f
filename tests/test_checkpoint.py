import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from torch_imdb.checkpoint import CONFIG, load_checkpoint, model_fingerprint, save_checkpoint
from torch_imdb.data import Vocab
from torch_imdb.errors import UsageError
from torch_imdb.model import ModelConfig, SentimentRNN


def small(vocab: Vocab, seed: int = 0, **arch) -> SentimentRNN:
    torch.manual_seed(seed)
    return SentimentRNN(ModelConfig(vocab_size=vocab.size, embed_dim=4, hidden=3, **arch))


def files(folder):
    cfg = json.loads((folder / CONFIG).read_text())
    return folder / cfg["weights_file"], folder / cfg["vocab_file"], cfg


@pytest.mark.parametrize("arch", [{}, dict(cell="gru"), dict(cell="lstm", layers=2, bidirectional=True),
                                  dict(cell="gru", layers=3, bidirectional=True, dropout_masks="shared")])
def test_round_trip(tmp_path, arch):
    vocab = Vocab.build(["a b c d e"])
    model = small(vocab, **arch).eval()
    fingerprint = save_checkpoint(tmp_path, model, vocab, {"maxlen": 7, "seed": 5})
    ck = load_checkpoint(tmp_path)
    assert ck.vocab == vocab and ck.maxlen == 7 and ck.config["seed"] == 5
    assert ck.fingerprint == fingerprint == model_fingerprint(model)
    ids = torch.randint(0, vocab.size, (3, 7))
    torch.testing.assert_close(ck.model(ids), model(ids), atol=0, rtol=0)
    assert ck.model.config == model.config and type(ck.model.rnn) is type(model.rnn)
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary files"


def test_fingerprint_changes_with_any_weight():
    vocab = Vocab.build(["a b c d e"])
    model = small(vocab)
    before = model_fingerprint(model)
    with torch.no_grad():
        model.fc.bias.add_(1e-7)
    assert model_fingerprint(model) != before
    assert model_fingerprint(small(vocab)) == before, "same weights, same fingerprint"


def test_saving_again_replaces_the_files(tmp_path):
    vocab = Vocab.build(["a b c d e"])
    save_checkpoint(tmp_path, small(vocab, seed=0), vocab, {"maxlen": 7})
    first = files(tmp_path)[0]
    fingerprint = save_checkpoint(tmp_path, small(vocab, seed=1), vocab, {"maxlen": 7})
    assert not first.exists() and load_checkpoint(tmp_path).fingerprint == fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG, f"model-{fingerprint}.pt",
                                                                 f"vocab-{vocab.fingerprint()}.json"])


def test_checkpoint_from_before_fingerprints_and_the_gru_loads(tmp_path):
    """Older checkpoints: model.pt / vocab.json, the recurrent module named `lstm`, no architecture fields."""
    vocab = Vocab.build(["a b c d e"])
    model = small(vocab).eval()
    save_checkpoint(tmp_path, model, vocab, {"maxlen": 7})
    weights, vocab_file, cfg = files(tmp_path)
    state = torch.load(weights, weights_only=True)
    torch.save({k.replace("rnn.", "lstm.", 1): v for k, v in state.items()}, tmp_path / "model.pt")
    vocab_file.rename(tmp_path / "vocab.json")
    weights.unlink()
    for key in ("cell", "layers", "bidirectional", "dropout_masks"):
        del cfg["model"][key]
    for key in ("weights_file", "vocab_file", "weights_fingerprint"):
        del cfg[key]
    (tmp_path / CONFIG).write_text(json.dumps(cfg))
    ids = torch.randint(0, vocab.size, (3, 7))
    ck = load_checkpoint(tmp_path)
    torch.testing.assert_close(ck.model(ids), model(ids), atol=0, rtol=0)
    assert ck.fingerprint == model_fingerprint(model)


def test_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    vocab = Vocab.build(["a b c d e"])
    save_checkpoint(tmp_path, small(vocab), vocab, {"maxlen": 7})
    weights, vocab_file, cfg = files(tmp_path)
    vocab_file.write_text(Vocab.build(["x y"]).to_json())  # a vocabulary from another run
    with pytest.raises(UsageError, match="different runs"):
        load_checkpoint(tmp_path)
    vocab_file.write_text(vocab.to_json())
    torch.save(small(vocab, seed=9).state_dict(), weights)  # weights of another run under this config
    with pytest.raises(UsageError, match="not the file config.json was written for"):
        load_checkpoint(tmp_path)
    cfg["model"]["hidden"] = 5  # weights whose shapes do not match the config
    (tmp_path / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="do not match"):
        load_checkpoint(tmp_path)
    weights.unlink()
    with pytest.raises(UsageError, match=f"lacks {weights.name}"):
        load_checkpoint(tmp_path)


def test_architecture_mismatch_is_one_line(tmp_path):
    vocab = Vocab.build(["a b c d e"])
    save_checkpoint(tmp_path, small(vocab, cell="gru"), vocab, {"maxlen": 7})
    cfg = json.loads((tmp_path / CONFIG).read_text())
    cfg["model"]["cell"] = "lstm"  # GRU weights under an LSTM config
    (tmp_path / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="do not match config.json"):
        load_checkpoint(tmp_path)
    cfg["model"]["cell"] = "transformer"
    (tmp_path / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="cell must be one of lstm, gru"):
        load_checkpoint(tmp_path)


SAVER = """
import sys, torch
from torch_imdb.checkpoint import save_checkpoint
from torch_imdb.data import Vocab
from torch_imdb.model import ModelConfig, SentimentRNN
vocab = Vocab.build([" ".join(f"w{k}" for k in range(3000))])
models = []
for seed in (0, 1):
    torch.manual_seed(seed)
    models.append(SentimentRNN(ModelConfig(vocab_size=vocab.size, embed_dim=64, hidden=32)))
save_checkpoint(sys.argv[1], models[0], vocab, {"maxlen": 9})
print("ready", flush=True)
k = 1
while True:
    save_checkpoint(sys.argv[1], models[k % 2], vocab, {"maxlen": 9, "save": k})
    k += 1
"""


def test_sigkill_during_saves_leaves_a_loadable_checkpoint(tmp_path):
    """A process killed at any moment of a save leaves the old checkpoint or the new one, complete."""
    from torch_imdb.checkpoint import model_fingerprint as fp

    vocab = Vocab.build([" ".join(f"w{k}" for k in range(3000))])
    expected = set()
    for seed in (0, 1):
        torch.manual_seed(seed)
        expected.add(fp(SentimentRNN(ModelConfig(vocab_size=vocab.size, embed_dim=64, hidden=32))))
    saves = []
    for attempt, delay in enumerate([0.05, 0.13, 0.21, 0.34, 0.55, 0.08, 0.29, 0.41]):
        folder = tmp_path / f"ck{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(folder)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ck = load_checkpoint(folder)
        assert ck.fingerprint in expected and model_fingerprint(ck.model) == ck.fingerprint
        saves.append(ck.config.get("save", 0))
    assert max(saves) > 1, "the saver was killed before it saved twice: the test proved nothing"
