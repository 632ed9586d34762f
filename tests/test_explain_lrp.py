import pytest
import torch

from torch_imdb.errors import UsageError
from torch_imdb.explain.lrp import lrp_lstm
from torch_imdb.model import ModelConfig, SentimentRNN


def test_relevance_is_conserved_without_biases():
    """With every bias 0 and a tiny eps, the epsilon rule conserves relevance: tokens sum to the logit."""
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(vocab_size=30, embed_dim=6, hidden=5)).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.zero_()
            else:
                p.mul_(2.0)
    ids = torch.randint(3, 30, (4, 7))
    relevance = lrp_lstm(model, ids, eps=1e-12)
    logit = model(ids)
    torch.testing.assert_close(relevance.sum(1), logit, atol=1e-8, rtol=1e-8)


def test_planted_tokens_get_the_relevance(tiny_checkpoint):
    """On the model trained on planted sentiment words, LRP ranks the planted word first, with the right sign."""
    from torch_imdb.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint[0])
    texts = ["w1 w2 superb w3 w4", "w5 awful w6 w7 w8"]
    ids = torch.from_numpy(ck.vocab.encode_many(texts, ck.maxlen))
    relevance = lrp_lstm(ck.model, ids)
    words = [ck.vocab.decode(row) for row in ids.numpy()]
    top = [words[n][int(relevance[n].abs().argmax())] for n in range(2)]
    assert top == ["superb", "awful"]
    assert relevance[0].max() > 0 > relevance[1].min()


def test_other_architectures_are_refused():
    with pytest.raises(UsageError, match="1-layer LSTM"):
        lrp_lstm(SentimentRNN(ModelConfig(vocab_size=10, embed_dim=4, hidden=3, cell="gru")), torch.zeros(1, 3).long())
