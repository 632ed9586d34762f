import json

import pytest
import torch

from torch_imdb.checkpoint import CONFIG, VOCAB, WEIGHTS, load_checkpoint, save_checkpoint
from torch_imdb.data import Vocab
from torch_imdb.errors import UsageError
from torch_imdb.model import ModelConfig, SentimentLSTM


def small(vocab: Vocab) -> SentimentLSTM:
    torch.manual_seed(0)
    return SentimentLSTM(ModelConfig(vocab_size=vocab.size, embed_dim=4, hidden=3))


def test_round_trip(tmp_path):
    vocab = Vocab.build(["a b c d e"])
    model = small(vocab).eval()
    save_checkpoint(tmp_path, model, vocab, {"maxlen": 7, "seed": 5})
    ck = load_checkpoint(tmp_path)
    assert ck.vocab == vocab and ck.maxlen == 7 and ck.config["seed"] == 5
    ids = torch.randint(0, vocab.size, (3, 7))
    torch.testing.assert_close(ck.model(ids), model(ids), atol=0, rtol=0)
    assert not list(tmp_path.glob("*.tmp")), "atomic writes leave no temporary files"


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
