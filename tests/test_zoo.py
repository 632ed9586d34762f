"""The zoo (tests/zoo.py): 30 models people write, each explained exactly by shap, Captum and the fast engine,
checked against the model itself; masks computed from the input refused by every engine, naming the line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from zoo import REFUSED, ZOO, zoo_inputs

from torch_imdb.errors import UsageError
from torch_imdb.explain import CaptumDeepLiftShap, FastDeepShap, ShapDeepExplainer

# The zoo models the fast engine's shortcuts (its own recurrence and heads) take; it explains the others by its
# general path, the transform with the fused recurrence.
FAST_TAKES = {"last", "final-state-bigru", "stacked-bilstm", "rnn-tanh", "mean", "max", "masked-mean", "attention",
              "packed-attention-mlp", "functional-mlp", "layer-norm", "gated", "transformer-layer", "tuple-output",
              "dict-output", "three-classes", "logsumexp", "normalize", "adaptive-max", "time-major", "series-gru",
              "series-rnn-relu"}


def explain(engine, case, dtype, model, x, bg, extra):
    return engine(model, dtype=dtype, output=case.output).attribute(x, bg, target=case.target,
                                                                    additional_forward_args=extra)


def own_outputs(model, case, x, extra) -> np.ndarray:
    """The model's own output at the case's target, run as it is."""
    with torch.no_grad():
        out = model(x, *extra)
    out = out[case.output] if case.output is not None else out
    return (out if out.dim() == 1 else out[:, case.target]).numpy()


def test_the_zoo_holds_thirty_models_with_every_part_named_in_the_issue():
    names = {case.name for case in ZOO}
    assert len(names) == len(ZOO) >= 30
    assert {"cnn-lstm", "hierarchical-attention", "lstm-into-bigru", "called-twice", "initial-state", "time-major",
            "packed-attention-mlp", "transformer-layer", "residual-embedding", "side-features"} <= names


@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.name)
def test_shap_and_captum_are_exact_against_the_model_itself(case):
    model, x, bg, extra = zoo_inputs(case)
    s = explain(ShapDeepExplainer, case, torch.float64, model, x, bg, extra)
    c = explain(CaptumDeepLiftShap, case, torch.float64, model, x, bg, extra)
    f_x = own_outputs(model, case, x, extra)
    for got in (s, c):
        np.testing.assert_allclose(got.outputs, f_x, atol=1e-12, rtol=0)
        real = got.values.reshape(len(x), -1).sum(1) - (f_x - got.expected_value)
        assert np.abs(real).max() < 1e-10
    assert np.abs(s.values - c.values).max() < 1e-10 and np.abs(s.values).max() > 1e-4


@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.name)
def test_the_fast_engine_equals_them_on_every_model(case):
    model, x, bg, extra = zoo_inputs(case)
    engine = FastDeepShap(model, torch.float64, output=case.output)
    f = engine.attribute(x, bg, target=case.target, additional_forward_args=extra)
    assert (engine.general is None) == (case.name in FAST_TAKES), f"the shortcuts' reach changed: {case.name}"
    s = explain(ShapDeepExplainer, case, torch.float64, model, x, bg, extra)
    assert np.abs(f.values - s.values).max() < 1e-10
    np.testing.assert_allclose(f.outputs, own_outputs(model, case, x, extra), atol=1e-12, rtol=0)


@pytest.mark.parametrize("case", ZOO, ids=lambda c: c.name)
def test_float32_within_the_guard(case):
    model, x, bg, extra = zoo_inputs(case, torch.float32)
    for engine in (ShapDeepExplainer, CaptumDeepLiftShap, FastDeepShap):
        got = explain(engine, case, torch.float32, model, x, bg, extra)  # raises past the guard
        assert got.extra["completeness_ratio"] <= 1


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
@pytest.mark.parametrize("engine", [ShapDeepExplainer, CaptumDeepLiftShap, FastDeepShap])
def test_masks_from_the_input_are_refused_by_every_engine_naming_the_line(case, engine):
    model, x, bg, extra = zoo_inputs(case)
    with pytest.raises(UsageError) as err:
        explain(engine, case, torch.float64, model, x, bg, extra)
    message = str(err.value)
    assert "no exact rule for" in message and "zoo.py:" in message and "FROM THE" in message and "\n" not in message


@pytest.mark.parametrize("case", [c for c in ZOO if c.name in FAST_TAKES], ids=lambda c: c.name)
def test_the_fast_engines_shortcuts_equal_the_general_path(case):
    """Where the fast engine takes a model (its closed-form and ruled heads over its own recurrence), its values are
    those of the general path: the transform with the recurrent modules as the fused rule (FusedDeepShap)."""
    from torch_imdb.explain import FusedDeepShap

    model, x, bg, extra = zoo_inputs(case)
    fast = explain(FastDeepShap, case, torch.float64, model, x, bg, extra)
    general = explain(FusedDeepShap, case, torch.float64, model, x, bg, extra)
    assert np.abs(fast.values - general.values).max() < 1e-10
    np.testing.assert_allclose(np.broadcast_to(fast.expected_value, len(x)),
                               np.broadcast_to(general.expected_value, len(x)), atol=1e-10, rtol=0)
