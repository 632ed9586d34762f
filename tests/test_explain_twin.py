import numpy as np
import pytest
import torch

from torch_imdb.explain.backends import CaptumDeepLiftShap
from torch_imdb.explain.twin import LSTMStep, LSTMTwin
from torch_imdb.model import ModelConfig, SentimentLSTM


@pytest.mark.parametrize("E,H,T", [(3, 2, 1), (8, 6, 5), (16, 12, 20), (32, 32, 80)])
def test_twin_equals_trained_model(E, H, T):
    torch.manual_seed(E + T)
    model = SentimentLSTM(ModelConfig(vocab_size=50, embed_dim=E, hidden=H)).eval()
    with torch.no_grad():
        model.lstm.bias_hh_l0.normal_()  # the twin must fold both biases
    ids = torch.randint(0, 50, (7, T))
    twin = LSTMTwin.from_model(model, T)
    expected = model.predict_proba(ids)
    torch.testing.assert_close(twin(twin.embed(ids))[:, 0], expected, atol=2e-7, rtol=1e-6)


def test_twin_rejects_other_lengths(tiny_model):
    twin = LSTMTwin.from_model(tiny_model, 5)
    with pytest.raises(ValueError, match="5 steps"):
        twin(torch.zeros(2, 4, 8))


def test_shared_input_trap_regression(tiny_model, monkeypatch):
    """Without the clone, Captum's hook on tanh(c)'s input replaces c's whole gradient (T >= 2)."""
    ids = torch.randint(3, 40, (2, 4))
    bg = torch.randint(3, 40, (3, 4))
    good = CaptumDeepLiftShap(tiny_model, torch.float64).attribute(ids, bg)
    assert good.extra["max_abs_delta"].max() < 1e-10

    def shared_forward(self, z, c):
        zi, zf, zg, zo = z.chunk(4, dim=1)
        c = self.fc_prod(self.sig_f(zf), c) + self.ig_prod(self.sig_i(zi), self.tanh_g(zg))
        return self.oc_prod(self.sig_o(zo), self.tanh_c(c)), c  # c also feeds the next step

    monkeypatch.setattr(LSTMStep, "forward", shared_forward)
    bad = CaptumDeepLiftShap(tiny_model, torch.float64).attribute(ids, bg)
    assert bad.extra["max_abs_delta"].max() > 1e-4
    assert np.abs(bad.values - good.values).max() > 1e-4
