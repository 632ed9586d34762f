import torch

from torch_imdb.model import ModelConfig, SentimentLSTM


def make(**kw) -> SentimentLSTM:
    torch.manual_seed(0)
    return SentimentLSTM(ModelConfig(vocab_size=30, embed_dim=5, hidden=4, **kw))


def test_output_shapes():
    model = make().eval()
    ids = torch.randint(0, 30, (7, 11))
    assert model(ids).shape == (7,)
    p = model.predict_proba(ids, batch_size=3)
    assert p.shape == (7,) and ((p > 0) & (p < 1)).all()


def test_keras_initialisation():
    model = make()
    H = 4
    b = model.lstm.bias_ih_l0.detach()
    assert torch.equal(b[H : 2 * H], torch.ones(H)) and b[:H].abs().sum() == 0 and b[2 * H :].abs().sum() == 0
    assert not model.lstm.bias_hh_l0.requires_grad and model.lstm.bias_hh_l0.abs().sum() == 0
    w = model.lstm.weight_hh_l0.detach()  # (4H, H) with orthonormal columns
    torch.testing.assert_close(w.t() @ w, torch.eye(H), atol=1e-5, rtol=0)
    assert model.embedding.weight.abs().max() <= 0.05


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


def test_dropout_paths_match_nn_lstm_when_rates_are_zero():
    model = make(dropout=0.0, recurrent_dropout=0.0)
    ids = torch.randint(0, 30, (4, 8))
    model.eval()
    ref = model(ids)
    from torch_imdb.keras_lstm import keras_dropout_lstm

    lstm = model.lstm
    h = keras_dropout_lstm(model.embedding(ids), lstm.weight_ih_l0, lstm.weight_hh_l0,
                           lstm.bias_ih_l0 + lstm.bias_hh_l0, 0.0, 0.0)
    torch.testing.assert_close(model.fc(h).squeeze(-1), ref, atol=1e-6, rtol=1e-5)


def test_one_dropout_mask_per_sequence(monkeypatch):
    """Both masks are drawn once per sequence: the recurrence sees the same mask at every step."""
    from torch_imdb import keras_lstm

    seen = {}
    real = keras_lstm._MaskedLSTM.apply

    def spy(xproj, w_hh, mask):
        seen["mask"] = mask
        return real(xproj, w_hh, mask)

    calls = []
    real_dropout = keras_lstm.F.dropout

    def count_dropout(t, p, training):
        calls.append(tuple(t.shape))
        return real_dropout(t, p, training)

    monkeypatch.setattr(keras_lstm._MaskedLSTM, "apply", spy)
    monkeypatch.setattr(keras_lstm.F, "dropout", count_dropout)
    model = make(dropout=0.5, recurrent_dropout=0.5).train()
    model(torch.randint(0, 30, (3, 12)))
    # exactly two masks: inputs (batch, 1, E) shared over all 12 steps, state (batch, H)
    assert calls == [(3, 1, 5), (3, 4)]
    assert seen["mask"].shape == (3, 4)
    assert set(seen["mask"].unique().tolist()) <= {0.0, 2.0}
