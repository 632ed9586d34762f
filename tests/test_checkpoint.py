import json

import pytest
import torch

from torch_imdb.checkpoint import CONFIG, VOCAB, WEIGHTS, load_checkpoint, save_checkpoint
from torch_imdb.data import Vocab
from torch_imdb.errors import UsageError
from torch_imdb.model import ModelConfig, SentimentRNN


def small(vocab: Vocab, **arch) -> SentimentRNN:
    torch.manual_seed(0)
    return SentimentRNN(ModelConfig(vocab_size=vocab.size, embed_dim=4, hidden=3, **arch))


@pytest.mark.parametrize("arch", [{}, dict(cell="gru"), dict(cell="lstm", layers=2, bidirectional=True),
                                  dict(cell="gru", layers=3, bidirectional=True, dropout_masks="shared")])
def test_round_trip(tmp_path, arch):
    vocab = Vocab.build(["a b c d e"])
    model = small(vocab, **arch).eval()
    save_checkpoint(tmp_path, model, vocab, {"maxlen": 7, "seed": 5})
    ck = load_checkpoint(tmp_path)
    assert ck.vocab == vocab and ck.maxlen == 7 and ck.config["seed"] == 5
    ids = torch.randint(0, vocab.size, (3, 7))
    torch.testing.assert_close(ck.model(ids), model(ids), atol=0, rtol=0)
    assert ck.model.config == model.config and type(ck.model.rnn) is type(model.rnn)
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary files"


def test_checkpoint_from_before_the_gru_loads(tmp_path):
    """Older checkpoints named the recurrent module `lstm` and had no architecture fields."""
    vocab = Vocab.build(["a b c d e"])
    model = small(vocab).eval()
    save_checkpoint(tmp_path, model, vocab, {"maxlen": 7})
    state = torch.load(tmp_path / WEIGHTS, weights_only=True)
    torch.save({k.replace("rnn.", "lstm.", 1): v for k, v in state.items()}, tmp_path / WEIGHTS)
    cfg = json.loads((tmp_path / CONFIG).read_text())
    for key in ("cell", "layers", "bidirectional", "dropout_masks"):
        del cfg["model"][key]
    (tmp_path / CONFIG).write_text(json.dumps(cfg))
    ids = torch.randint(0, vocab.size, (3, 7))
    torch.testing.assert_close(load_checkpoint(tmp_path).model(ids), model(ids), atol=0, rtol=0)


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


def test_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")
    vocab = Vocab.build(["a b c d e"])
    save_checkpoint(tmp_path, small(vocab), vocab, {"maxlen": 7})
    # a vocabulary from another run
    (tmp_path / VOCAB).write_text(Vocab.build(["x y"]).to_json())
    with pytest.raises(UsageError, match="different runs"):
        load_checkpoint(tmp_path)
    (tmp_path / VOCAB).write_text(vocab.to_json())
    # weights whose shapes do not match the config
    cfg = json.loads((tmp_path / CONFIG).read_text())
    cfg["model"]["hidden"] = 5
    (tmp_path / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="do not match"):
        load_checkpoint(tmp_path)
    (tmp_path / WEIGHTS).unlink()
    with pytest.raises(UsageError, match="lacks model.pt"):
        load_checkpoint(tmp_path)
