import json
import re
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
    with pytest.raises(UsageError, match="cell = .transformer. is not one of lstm, gru"):
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


# --- checkpoints from elsewhere: nothing in config.json can make the loader read outside the folder, hang,
# allocate before the checks or print a traceback ---------------------------------------------------------

def load_within(folder, seconds: float = 20.0):
    """load_checkpoint in a thread: a loader that hangs (a FIFO, /dev/zero) fails the test instead of the run."""
    import threading

    outcome = {}

    def target():
        try:
            outcome["value"] = load_checkpoint(folder)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"load_checkpoint({folder}) still runs after {seconds} s"
    return outcome


def refused(folder, match: str) -> str:
    outcome = load_within(folder)
    error = outcome.get("error")
    assert isinstance(error, UsageError), outcome
    message = str(error)
    assert "\n" not in message and re.search(match, message), message
    return message


def saved(tmp_path, **arch):
    vocab = Vocab.build(["a b c d e"])
    save_checkpoint(tmp_path, small(vocab, **arch), vocab, {"maxlen": 7})
    return files(tmp_path)


def rewrite(folder, cfg):
    (folder / CONFIG).write_text(json.dumps(cfg))


@pytest.mark.parametrize("name", ["/etc/passwd", "../model.pt", "sub/model.pt", "..", ".", "", 7, None, "a\nb"])
def test_config_names_only_plain_files_in_the_folder(tmp_path, name):
    weights, _, cfg = saved(tmp_path)
    (tmp_path.parent / "model.pt").write_bytes(weights.read_bytes())  # a real weights file one level up
    rewrite(tmp_path, {**cfg, "weights_file": name})
    refused(tmp_path, "not a plain file name in the folder")


@pytest.mark.parametrize("target", ["fifo", "/dev/zero", "outside"])
@pytest.mark.parametrize("role", ["weights_file", "vocab_file", "config"])
def test_links_fifos_and_devices_are_refused_without_hanging(tmp_path, target, role):
    weights, vocab, cfg = saved(tmp_path / "ck")
    folder = tmp_path / "ck"
    victim = folder / (CONFIG if role == "config" else cfg[role])
    kept = victim.read_bytes()
    victim.unlink()
    if target == "fifo":
        os.mkfifo(victim)
    elif target == "/dev/zero":
        victim.symlink_to("/dev/zero")
    else:
        outside = tmp_path / victim.name
        outside.write_bytes(kept)
        victim.symlink_to(outside)
    refused(folder, "not a regular file inside the folder")


@pytest.mark.parametrize("field,value,match", [
    ("hidden", -3, r"hidden = -3 is not an integer in \[1, 16384\]"),
    ("hidden", "3", r"hidden = '3' is not an integer"),
    ("layers", 1.5, r"layers = 1.5 is not an integer"),
    ("bidirectional", "yes", "is not true or false"),
    ("dropout", 2, r"dropout = 2 is not a number in \[0, 1\)"),
    ("dropout", float("nan"), r"dropout = nan is not a number in \[0, 1\)"),
    ("vocab_size", 10**12, r"vocab_size = 1000000000000 is not an integer in \[3, 10000000\]"),
    ("pool", "sum", "pool = 'sum' is not one of last, mean, max, attention"),
    ("activation", "relu", r"unknown model settings \(activation\)"),
])
def test_config_fields_are_checked_before_anything_is_built(tmp_path, field, value, match):
    _, _, cfg = saved(tmp_path)
    cfg["model"][field] = value
    rewrite(tmp_path, cfg)
    refused(tmp_path, match)


def test_a_model_larger_than_its_weights_file_is_refused_before_allocation(tmp_path, monkeypatch):
    """10M words x 16384 wide would be 655 GB: refused from the file size, and the model is never built."""
    import torch_imdb.checkpoint as checkpoint

    _, _, cfg = saved(tmp_path)
    cfg["model"].update(vocab_size=10_000_000, embed_dim=16384)
    rewrite(tmp_path, cfg)
    monkeypatch.setattr(checkpoint, "build_model", lambda *a, **k: pytest.fail("the model was built"))
    refused(tmp_path, "describes 163,84.* parameters, which model-.*cannot hold")


@pytest.mark.parametrize("content,match", [
    ("[1, 2]", "holds a JSON list, not a training config"),
    ("{", "config.json is unreadable"),
    ('{"maxlen": 7}', "has no `model` settings"),
    ("\xff\xfe", "config.json is unreadable"),
])
def test_malformed_configs_are_one_line(tmp_path, content, match):
    saved(tmp_path)
    (tmp_path / CONFIG).write_bytes(content.encode("latin-1"))
    refused(tmp_path, match)


@pytest.mark.parametrize("maxlen", [-1, 0, 1_000_000])
def test_maxlen_is_checked(tmp_path, maxlen):
    """A crafted maxlen of 1,000,000 would have explain ask for 51 GB: refused before anything is built."""
    _, _, cfg = saved(tmp_path)
    rewrite(tmp_path, {**cfg, "maxlen": maxlen})
    refused(tmp_path, rf"maxlen = {maxlen} is not an integer in \[1, 4096\]")


def test_a_deeply_nested_config_is_one_line(tmp_path):
    """600 KB of nested arrays, under the 1 MiB cap: a RecursionError traceback before, one line now."""
    saved(tmp_path)
    depth = 300_000
    (tmp_path / CONFIG).write_text('{"model": ' + "[" * depth + "]" * depth + "}")
    refused(tmp_path, "config.json nests deeper than 64 levels")


def test_a_vocabulary_with_a_repeated_word_is_refused_even_with_its_fingerprint_recomputed(tmp_path):
    """Two ids for one word: the vocabulary must be a bijection on its ids, whatever fingerprint the config gives."""
    _, vocab_path, cfg = saved(tmp_path)
    words = json.loads(vocab_path.read_text())["words"]
    words[1] = words[0]
    vocab_path.write_text(json.dumps({"words": words}))
    rewrite(tmp_path, {**cfg, "vocab_fingerprint": Vocab(tuple(words)).fingerprint()})
    refused(tmp_path, f"word {words[0]!r} has ids 3 and 4")


def test_a_pickle_that_weights_only_blocks_is_one_line(tmp_path):
    weights, _, _ = saved(tmp_path)

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"x": Payload(), "pad": torch.zeros(4096)}, weights)  # past the size check: the unpickler is reached
    message = refused(tmp_path, "unreadable \\(UnpicklingError: Weights only load failed")
    assert len(message) < 400


@pytest.mark.parametrize("content", [b"", b"\0" * 5000, b"PK\x03\x04" + b"\0" * 5000])
def test_damaged_weights_and_vocabulary_are_one_line(tmp_path, content):
    weights, vocab, _ = saved(tmp_path)
    weights.write_bytes(content)
    refused(tmp_path, "cannot hold|unreadable")
    weights.unlink()
    saved(tmp_path)
    _, vocab, _ = files(tmp_path)
    vocab.write_bytes(b'{"words": [1, 2]}')
    refused(tmp_path, "unreadable .*not a vocabulary")


def test_saves_remove_the_temporary_files_of_killed_saves(tmp_path):
    saved(tmp_path)
    for stale in (".model-0123456789abcdef.pt.x1y2.tmp", ".vocab-aa.json.zz.tmp", ".config.json.q.tmp"):
        (tmp_path / stale).write_bytes(b"\0" * 100)
    (tmp_path / ".notes.txt.tmp").write_text("not ours")
    saved(tmp_path)
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == [".notes.txt.tmp"]
