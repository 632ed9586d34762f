"""The models beyond the Keras example's shape: built from their config, trained by the same loop, saved and loaded,
and explained exactly by every engine."""

import numpy as np
import pytest
import torch

from torch_imdb.architectures import MODELS, build_model, parameter_count
from torch_imdb.checkpoint import load_checkpoint
from torch_imdb.config import ARCHITECTURES, ModelConfig
from torch_imdb.errors import UsageError
from torch_imdb.explain.backends import ShapDeepExplainer
from torch_imdb.explain.engines import make_engine
from torch_imdb.training import TrainConfig, fit

OTHERS = ("han", "cnn-lstm", "lstm-bigru")
SMALL = dict(maxlen=16, embed_dim=16, hidden=16, batch_size=32, device="cpu")


def small(architecture: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=40, embed_dim=6, hidden=5, attention_dim=4,
                                   architecture=architecture)).eval()


def test_every_architecture_has_its_model():
    assert tuple(MODELS) == ARCHITECTURES


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("extra", [{}, dict(layers=2, bidirectional=True, pool="attention")])
def test_parameter_count_is_the_built_models(architecture, extra):
    """Counted on the meta device, as training and loading refuse a model too large: the built model's count."""
    config = ModelConfig(vocab_size=300, embed_dim=12, hidden=7, **(extra if architecture == "rnn" else {}))
    config = ModelConfig(**{**config.to_dict(), "architecture": architecture})
    assert parameter_count(config) == sum(p.numel() for p in build_model(config).parameters())


@pytest.mark.parametrize("T", [16, 20, 3])
def test_han_takes_any_length(T):
    """A review length that is not a whole number of 10-word chunks gets zero vectors in front."""
    model = small("han")
    ids = torch.randint(1, 40, (3, T))
    out = model(ids)
    assert out.shape == (3,) and torch.isfinite(out).all()


@pytest.mark.parametrize("architecture", OTHERS)
def test_training_learns_planted_words_and_the_checkpoint_loads(planted_data, tmp_path, architecture):
    cfg = TrainConfig.of(epochs=6, lr=5e-3, data=str(planted_data), seed=0, architecture=architecture, **SMALL)
    metrics = fit(cfg, tmp_path / "ck", log=lambda *_: None)
    assert metrics["final_test_accuracy"] >= 0.95, metrics["epochs"]
    ck = load_checkpoint(tmp_path / "ck")
    assert type(ck.model) is MODELS[architecture] and ck.model.config == cfg.model_config(ck.vocab.size)
    assert metrics["architecture"] == ck.model.config.describe() and metrics["weights_fingerprint"] == ck.fingerprint


@pytest.mark.parametrize("architecture", OTHERS)
def test_the_fast_engine_explains_them_as_shap_does(architecture):
    """Through the fast engine's general path (two recurrent modules, a front end, chunks): shap's values in float64,
    adding up to P(positive) - E P(positive) of the model itself."""
    model = small(architecture).double()
    g = np.random.default_rng(1)
    ids, bg = torch.from_numpy(g.integers(0, 40, (3, 20))), torch.from_numpy(g.integers(0, 40, (4, 20)))
    fast = make_engine("fast", model, torch.float64).attribute(ids, bg)
    ref = ShapDeepExplainer(model, torch.float64).attribute(ids, bg)
    assert np.abs(fast.values - ref.values).max() < 1e-10
    own = torch.sigmoid(model(ids)).detach().numpy()
    expected = torch.sigmoid(model(bg)).mean().item()
    assert np.abs(fast.values.sum(1) - (own - expected)).max() < 1e-10


def test_compiled_general_path_equals_eager():
    """compile=True reaches the general path's fused recurrence: the same float32 values, to rounding."""
    model = small("lstm-bigru")
    g = np.random.default_rng(2)
    ids, bg = torch.from_numpy(g.integers(0, 40, (2, 12))), torch.from_numpy(g.integers(0, 40, (3, 12)))
    compiled = make_engine("fast-compiled", model)
    values = compiled.attribute(ids, bg).values
    assert compiled.general is not None and compiled.general.compile
    assert np.abs(values - make_engine("fast", model).attribute(ids, bg).values).max() < 1e-6


def test_rnn_only_options_are_refused_for_the_others():
    with pytest.raises(UsageError, match="--pool apply to --architecture rnn only"):
        TrainConfig.of(architecture="han", pool="attention").validate()
    with pytest.raises(UsageError, match="--architecture must be one of"):
        TrainConfig.of(architecture="transformer").validate()


def test_the_plain_rnn_control_is_the_keras_shapes_alone():
    """The explain command's control (the libraries on a plain nn.LSTM) needs embeddings -> recurrence -> Linear: the
    other architectures have none to hand over, and are explained without it."""
    from torch_imdb.explain.backends import plain_rnn_failures

    ids = torch.randint(0, 40, (2, 20))
    assert all(plain_rnn_failures(small(a), ids, ids) is None for a in OTHERS)
