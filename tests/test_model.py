import pytest
import torch
from torch import nn

from torch_imdb.config import POOLS, ModelConfig
from torch_imdb.model import SentimentRNN

ARCHS = [dict(), dict(cell="gru"), dict(layers=2, bidirectional=True), dict(cell="gru", layers=2, bidirectional=True),
         dict(cell="rnn_tanh"), dict(cell="rnn_relu", layers=2, bidirectional=True)]


def make(**kw) -> SentimentRNN:
    torch.manual_seed(0)
    return SentimentRNN(ModelConfig(vocab_size=30, embed_dim=5, hidden=4, **kw))


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: ModelConfig(**a).describe())
def test_output_shapes(arch):
    model = make(**arch).eval()
    ids = torch.randint(0, 30, (7, 11))
    assert model(ids).shape == (7,)
    p = model.predict_proba(ids, batch_size=3)
    assert p.shape == (7,) and ((p > 0) & (p < 1)).all()
    assert model.fc.in_features == 4 * (2 if arch.get("bidirectional") else 1)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: ModelConfig(**a).describe())
def test_head_reads_the_last_layers_final_states(arch):
    """Forward direction: the output at the last step; reverse: the output at the first step."""
    model = make(**arch).eval()
    ids = torch.randint(0, 30, (5, 9))
    out, _ = model.rnn(model.embedding(ids))
    H = 4
    expected = out[:, -1, :H] if not arch.get("bidirectional") else torch.cat([out[:, -1, :H], out[:, 0, H:]], 1)
    torch.testing.assert_close(model.encode(model.embedding(ids)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: ModelConfig(**a).describe())
def test_train_path_equals_fused_path_without_dropout(arch):
    model = make(dropout=0.0, recurrent_dropout=1e-9, **arch)  # a rate > 0 takes the Keras-dropout path
    ids = torch.randint(0, 30, (4, 8))
    fused = model.eval()(ids)
    torch.testing.assert_close(model.train()(ids), fused, atol=1e-5, rtol=1e-5)


def test_keras_initialisation_lstm():
    model = make(layers=2, bidirectional=True)
    H = 4
    for sfx in ("_l0", "_l1_reverse"):
        b = getattr(model.rnn, "bias_ih" + sfx).detach()
        assert torch.equal(b[H : 2 * H], torch.ones(H)) and b[:H].abs().sum() == 0 and b[2 * H :].abs().sum() == 0
        bias_hh = getattr(model.rnn, "bias_hh" + sfx)
        assert not bias_hh.requires_grad and bias_hh.abs().sum() == 0
        w = getattr(model.rnn, "weight_hh" + sfx).detach()  # (4H, H) with orthonormal columns
        torch.testing.assert_close(w.t() @ w, torch.eye(H), atol=1e-5, rtol=0)
    assert model.embedding.weight.abs().max() <= 0.05


@pytest.mark.parametrize("cell,nonlinearity", [("rnn_tanh", "tanh"), ("rnn_relu", "relu")])
def test_elman_cells_are_nn_rnn_with_one_trained_bias_as_keras_simplernn(cell, nonlinearity):
    model = make(cell=cell)
    assert type(model.rnn) is nn.RNN and model.rnn.nonlinearity == nonlinearity
    assert not model.rnn.bias_hh_l0.requires_grad and model.rnn.bias_ih_l0.requires_grad
    assert model.rnn.bias_ih_l0.abs().sum() == 0  # no forget gate to open


def test_keras_initialisation_gru_keeps_both_biases_trainable():
    model = make(cell="gru")
    assert isinstance(model.rnn, nn.GRU)
    assert model.rnn.bias_hh_l0.requires_grad and model.rnn.bias_ih_l0.requires_grad
    assert model.rnn.bias_ih_l0.abs().sum() == 0 and model.rnn.bias_hh_l0.abs().sum() == 0


def test_eval_mode_is_deterministic_and_train_mode_drops():
    model = make(dropout=0.5, recurrent_dropout=0.5)
    ids = torch.randint(0, 30, (6, 9))
    model.eval()
    assert torch.equal(model(ids), model(ids))
    model.train()
    torch.manual_seed(1)
    a = model(ids)
    torch.manual_seed(2)
    b = model(ids)
    assert not torch.allclose(a, b)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(cell="rnn")  # the Elman cells are named by their nonlinearity
    with pytest.raises(ValueError, match="dropout_masks"):
        ModelConfig(dropout_masks="per-step")


def test_describe():
    assert ModelConfig().describe() == "LSTM(128)"
    assert ModelConfig(cell="gru", layers=2, bidirectional=True, hidden=64).describe() == "2-layer bidirectional GRU(64)"


@pytest.mark.parametrize("pool", POOLS)
def test_pooling_reads_the_review_tokens_only(pool):
    """Each pool by hand from nn.LSTM's outputs; padding (id 0) never reaches the head; training runs."""
    torch.manual_seed(1)
    model = SentimentRNN(ModelConfig(vocab_size=30, embed_dim=6, hidden=5, bidirectional=True, pool=pool,
                                     attention_dim=4)).double().eval()
    ids = torch.tensor([[0, 0, 7, 8, 9], [4, 5, 6, 7, 8]])
    with torch.no_grad():
        out, (h, _) = model.rnn(model.embedding(ids))
        keep = ids != 0
        if pool == "last":
            pooled = torch.cat([h[-2], h[-1]], dim=1)
        elif pool == "mean":
            pooled = torch.stack([out[n][keep[n]].mean(0) for n in range(2)])
        elif pool == "max":
            pooled = torch.stack([out[n][keep[n]].max(0).values for n in range(2)])
        else:
            scores = model.attn_v(torch.tanh(model.attn(out))).squeeze(-1)
            alpha = [torch.exp(scores[n][keep[n]]) / torch.exp(scores[n][keep[n]]).sum() for n in range(2)]
            pooled = torch.stack([(alpha[n][:, None] * out[n][keep[n]]).sum(0) for n in range(2)])
            weights = model.attention_weights(ids)
            assert torch.all(weights[0, :2] == 0)
            torch.testing.assert_close(weights[0, 2:], alpha[0], atol=1e-12, rtol=0)
            torch.testing.assert_close(weights.sum(1), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(model(ids), model.fc(pooled).squeeze(-1), atol=1e-12, rtol=0)
    model.train()  # Keras dropout path: the pooled head trains
    model(ids).sum().backward()
    assert model.fc.weight.grad.abs().sum() > 0
    assert "pooling" in model.config.describe() or pool == "last"


@pytest.mark.parametrize("pool", POOLS)
def test_a_review_of_padding_alone_has_a_finite_output(pool):
    """Faithfulness metrics delete every token of a review: pooling over nothing must not give NaN."""
    torch.manual_seed(0)
    model = SentimentRNN(ModelConfig(vocab_size=20, embed_dim=4, hidden=3, pool=pool, attention_dim=3)).eval()
    ids = torch.tensor([[0, 0, 0, 0], [0, 0, 5, 6]])
    out = model(ids)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1:], model(ids[1:]))  # a real review is read as before
