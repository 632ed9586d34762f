"""The one engine registry (explain/engines.py) and the protocol every engine follows (explain/api.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from torch_imdb.explain.api import Attribution, Explainer
from torch_imdb.explain.engines import REGISTRY, make_engine


def test_every_engine_follows_the_protocol_and_adds_up_to_the_model(tiny_model):
    g = torch.Generator().manual_seed(0)
    x, bg = torch.randint(1, 40, (2, 10), generator=g), torch.randint(0, 40, (3, 10), generator=g)
    model64 = copy.deepcopy(tiny_model).double()
    with torch.no_grad():
        f_x = torch.sigmoid(model64(x)).numpy()
        base = torch.sigmoid(model64(bg)).mean().item()
    for name in REGISTRY:
        engine = make_engine(name, tiny_model, torch.float64)
        assert isinstance(engine, Explainer), name
        res = engine.attribute(x, bg)
        assert isinstance(res, Attribution) and res.values.shape == (2, 10), name
        np.testing.assert_allclose(res.values.sum(axis=1), f_x - base, atol=1e-9, err_msg=name)


def test_options_reach_the_engine_they_name(tiny_model):
    assert make_engine("fast", tiny_model, chunk_pairs=7).chunk_pairs == 7
    assert make_engine("fast-compiled", tiny_model).compiled and not make_engine("fast", tiny_model).compiled
    assert make_engine("shapley", tiny_model, target_reliability=0.9).target_reliability == 0.9
    assert make_engine("shap", tiny_model, output=0).output == 0
    with pytest.raises(TypeError):
        make_engine("captum", tiny_model, chunk_pairs=7)  # not an option of that engine
