"""shap.DeepExplainer and Captum DeepLiftShap on the twin, behind one interface.

Every explainer here (and :class:`torch_imdb.explain.fast.FastDeepShap`) has

    attribute(inputs, baselines) -> TokenAttribution

with ``inputs`` token ids (N, T) of the reviews to explain and ``baselines``
token ids (B, T) of the background. Attributions explain P(positive), per
token: the sum over the 128 embedding dimensions of that token's attribution.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from torch_imdb.errors import UsageError
from torch_imdb.explain.twin import LSTMTwin
from torch_imdb.model import SentimentLSTM


@dataclass
class TokenAttribution:
    """Per-token attributions of N reviews against a background of B.

    values: (N, T) float64, attribution of each token to P(positive).
    outputs: (N,) model outputs f(x); expected_value: mean f over the background.
    residual: (N,) completeness error sum(values) - (f(x) - expected_value).
    """

    method: str
    values: np.ndarray
    outputs: np.ndarray
    expected_value: float
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def residual(self) -> np.ndarray:
        return self.values.sum(axis=1) - (self.outputs - self.expected_value)


def check_ids(inputs: torch.Tensor, baselines: torch.Tensor, vocab_size: int) -> None:
    """One-line errors for inputs no explainer can handle."""
    for name, t in (("inputs", inputs), ("baselines", baselines)):
        if t.ndim != 2 or t.shape[0] == 0:
            raise UsageError(f"{name} must be token ids of shape (n, T) with n >= 1, got {tuple(t.shape)}")
        if t.dtype not in (torch.int64, torch.int32):
            raise UsageError(f"{name} must be integer token ids, got {t.dtype}")
        if int(t.min()) < 0 or int(t.max()) >= vocab_size:
            raise UsageError(f"{name} hold ids outside [0, {vocab_size}); were they encoded with this checkpoint's vocabulary?")
    if inputs.shape[1] != baselines.shape[1]:
        raise UsageError(f"inputs have {inputs.shape[1]} tokens but baselines {baselines.shape[1]}; encode both with the same maxlen")


class _TwinExplainer:
    """Shared set-up: the twin of ``model`` in ``dtype`` on the model's device."""

    method = ""

    def __init__(self, model: SentimentLSTM, dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.dtype = dtype

    def _twin(self, steps: int) -> LSTMTwin:
        return LSTMTwin.from_model(self.model, steps).to(dtype=self.dtype).eval()


class ShapDeepExplainer(_TwinExplainer):
    """``shap.DeepExplainer`` on the twin, with shap's additivity check on (its default)."""

    method = "shap"

    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor) -> TokenAttribution:
        import shap

        check_ids(inputs, baselines, self.model.config.vocab_size)
        twin = self._twin(inputs.shape[1])
        x, bg = twin.embed(inputs), twin.embed(baselines)
        t0 = time.perf_counter()
        with twin.shapley_products(), warnings.catch_warnings():
            # shap warns once per Product module ("unrecognized nn.Module") and passes its
            # gradient through unchanged, which is what we want: the rule lives in its backward.
            warnings.filterwarnings("ignore", message="unrecognized nn.Module")
            explainer = shap.DeepExplainer(twin, bg)
            phis = explainer.shap_values(x)  # (N, T, E, 1); raises if additivity fails
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            outputs = twin(x)[:, 0].double().cpu().numpy()
        values = np.asarray(phis)[..., 0].sum(axis=2)
        return TokenAttribution(self.method, values, outputs, float(explainer.expected_value[0]), seconds)


class CaptumDeepLiftShap(_TwinExplainer):
    """``captum.attr.DeepLiftShap`` on the twin; ``reviews_per_call`` bounds memory.

    ``extra['max_abs_delta']`` holds, per review, the largest |convergence delta|
    Captum reports over its (review, baseline) pairs.
    """

    method = "captum"

    def __init__(self, model: SentimentLSTM, dtype: torch.dtype = torch.float32, reviews_per_call: int = 1) -> None:
        super().__init__(model, dtype)
        self.reviews_per_call = reviews_per_call

    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor) -> TokenAttribution:
        from captum.attr import DeepLiftShap

        check_ids(inputs, baselines, self.model.config.vocab_size)
        if baselines.shape[0] < 2:
            raise UsageError("Captum's DeepLiftShap needs at least 2 background reviews; use --background >= 2")
        twin = self._twin(inputs.shape[1])
        x, bg = twin.embed(inputs), twin.embed(baselines)
        values, deltas = [], []
        t0 = time.perf_counter()
        with twin.shapley_products(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*hooks.*")
            dls = DeepLiftShap(twin)
            for k in range(0, len(x), self.reviews_per_call):
                attr, delta = dls.attribute(x[k : k + self.reviews_per_call], baselines=bg, target=0,
                                            return_convergence_delta=True)
                values.append(attr.sum(dim=2).detach().double().cpu())
                deltas.append(delta.detach().double().cpu().view(-1, len(bg)).abs().max(dim=1).values)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            outputs = twin(x)[:, 0].double().cpu().numpy()
            expected = float(twin(bg)[:, 0].double().mean())
        return TokenAttribution(self.method, torch.cat(values).numpy(), outputs, expected, seconds,
                                extra={"max_abs_delta": torch.cat(deltas).numpy()})


class PlainLSTMHead(nn.Module):
    """Embedded input -> nn.LSTM -> Linear -> Sigmoid, what a user would hand the libraries.

    Neither library has a rule for nn.LSTM; this exists to show what goes wrong.
    """

    def __init__(self, model: SentimentLSTM) -> None:
        super().__init__()
        self.lstm, self.fc, self.out = model.lstm, model.fc, nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        return self.out(self.fc(h[-1]))


def plain_lstm_failures(model: SentimentLSTM, inputs: torch.Tensor, baselines: torch.Tensor) -> dict:
    """Run both libraries on the plain nn.LSTM and report how far they are from complete.

    Returns, per library, the largest completeness error (shap: sum of SHAP
    values minus (f(x) - E f); Captum: |convergence delta|) and, for shap,
    whether its own additivity check raised and with what message.
    """
    import shap
    from captum.attr import DeepLiftShap

    head = PlainLSTMHead(model).eval()
    emb = model.embedding
    with torch.no_grad():
        x, bg = emb(inputs), emb(baselines)
        f_x = head(x)[:, 0].double().numpy()
    report: dict = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        explainer = shap.DeepExplainer(head, bg)
        try:
            explainer.shap_values(x)
            report["shap_additivity_check"] = "passed"
        except AssertionError as exc:
            report["shap_additivity_check"] = "raised: " + str(exc).split("!")[0] + "!"
        phis = np.asarray(explainer.shap_values(x, check_additivity=False))[..., 0]
        shap_res = phis.sum(axis=(1, 2)) - (f_x - float(explainer.expected_value[0]))
        _, delta = DeepLiftShap(head).attribute(x, baselines=bg, target=0, return_convergence_delta=True)
    report["shap_max_abs_residual"] = float(np.abs(shap_res).max())
    report["captum_max_abs_delta"] = float(delta.abs().max())
    report["model_output_range"] = [float(f_x.min()), float(f_x.max())]
    return report
