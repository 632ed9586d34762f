import numpy as np
import pytest
import torch

from torch_imdb.errors import UsageError
from torch_imdb.explain.backends import CaptumDeepLiftShap, ShapDeepExplainer, plain_rnn_failures


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (3, 6), generator=g)
    bg = torch.randint(0, 40, (5, 6), generator=g)
    ids[0, :3] = 0  # padding, as in real reviews
    bg[:, :2] = 0
    return ids, bg


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_shap_and_captum_are_complete_and_agree(tiny_model, batch, dtype, tol):
    ids, bg = batch
    s = ShapDeepExplainer(tiny_model, dtype).attribute(ids, bg)  # shap's additivity check is on
    c = CaptumDeepLiftShap(tiny_model, dtype).attribute(ids, bg)
    assert s.values.shape == (3, 6)
    assert np.abs(s.residual).max() < tol and np.abs(c.residual).max() < tol
    assert c.extra["max_abs_delta"].max() < tol
    assert np.abs(s.values - c.values).max() < tol
    assert abs(s.expected_value - c.expected_value) < tol
    expected = tiny_model.predict_proba(bg).double().mean().item()
    assert abs(s.expected_value - expected) < 1e-6


def test_no_nan_when_input_equals_reference(tiny_model, batch):
    _, bg = batch
    ids = bg[:2].clone()
    for engine in (ShapDeepExplainer(tiny_model), CaptumDeepLiftShap(tiny_model)):
        res = engine.attribute(ids, bg[:2])
        assert np.isfinite(res.values).all()
    same = ShapDeepExplainer(tiny_model, torch.float64).attribute(bg[:1], bg[:1])
    assert np.abs(same.values).max() == 0.0  # nothing differs from the reference, nothing to attribute


def test_plain_nn_lstm_breaks_both_libraries(tiny_model, batch):
    ids, bg = batch
    report = plain_rnn_failures(tiny_model, ids, bg)
    assert report["shap_max_abs_residual"] > 1e-4
    assert report["captum_max_abs_delta"] > 1e-4


def test_bad_ids_are_clear_errors(tiny_model, batch):
    ids, bg = batch
    with pytest.raises(UsageError, match="outside"):
        ShapDeepExplainer(tiny_model).attribute(ids + 100, bg)
    with pytest.raises(UsageError, match="same maxlen"):
        ShapDeepExplainer(tiny_model).attribute(ids[:, :4], bg)
    with pytest.raises(UsageError, match="at least 2"):
        CaptumDeepLiftShap(tiny_model).attribute(ids, bg[:1])
    with pytest.raises(UsageError, match="n >= 1"):
        ShapDeepExplainer(tiny_model).attribute(ids[:0], bg)
