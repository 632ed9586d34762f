"""shap.DeepExplainer and Captum DeepLiftShap on the explainable copy of a model, behind one interface.

Every explainer here (and :class:`torch_imdb.explain.fast.FastDeepShap`) has

    attribute(inputs, baselines, target=0) -> Attribution

``inputs`` are either token ids (N, T) of the sequences to explain, with
``baselines`` ids (B, T) of the background, or float sequences (N, T, F) and
(B, T, F). For token ids the attributions are taken at the embedding output
and summed over its dimensions: one value per token (N, T). For float inputs
there is one value per step and feature (N, T, F).

The model can be any ``nn.Module`` built from layers the libraries handle plus
``nn.LSTM`` / ``nn.GRU`` (replaced by the explainable twin, see
:func:`~torch_imdb.explain.twin.make_explainable`). Its output (N, K) is
explained at column ``target``. The project's :class:`~torch_imdb.model.SentimentRNN`
returns logits (N,); it is explained as P(positive) (N, 1).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from torch_imdb.errors import UsageError
from torch_imdb.explain.twin import EmbeddingOrVectors, make_explainable
from torch_imdb.model import SentimentRNN


@dataclass
class Attribution:
    """Attributions of N sequences against a background of B.

    values: (N, T) float64 per token, or (N, T, F) per step and feature.
    outputs: (N,) model outputs f(x) at the target; expected_value: mean f over the background.
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
        return self.values.reshape(len(self.values), -1).sum(axis=1) - (self.outputs - self.expected_value)


def check_ids(inputs: torch.Tensor, baselines: torch.Tensor, vocab_size: int) -> None:
    """One-line errors for token ids no explainer can handle."""
    for name, t in (("inputs", inputs), ("baselines", baselines)):
        if t.ndim != 2 or t.shape[0] == 0:
            raise UsageError(f"{name} must be token ids of shape (n, T) with n >= 1, got {tuple(t.shape)}")
        if t.dtype not in (torch.int64, torch.int32):
            raise UsageError(f"{name} must be integer token ids, got {t.dtype}")
        if int(t.min()) < 0 or int(t.max()) >= vocab_size:
            raise UsageError(f"{name} hold ids outside [0, {vocab_size}); were they encoded with this checkpoint's vocabulary?")
    if inputs.shape[1] != baselines.shape[1]:
        raise UsageError(f"inputs have {inputs.shape[1]} tokens but baselines {baselines.shape[1]}; encode both with the same maxlen")


def check_sequences(inputs: torch.Tensor, baselines: torch.Tensor) -> None:
    """One-line errors for float sequences (n, T, F) no explainer can handle."""
    for name, t in (("inputs", inputs), ("baselines", baselines)):
        if t.ndim != 3 or t.shape[0] == 0 or not t.is_floating_point():
            raise UsageError(f"{name} must be float sequences of shape (n, T, F) with n >= 1, "
                             f"got {tuple(t.shape)} {t.dtype}")
        if not torch.isfinite(t).all():
            raise UsageError(f"{name} hold NaN or infinite values")
    if inputs.shape[1:] != baselines.shape[1:]:
        raise UsageError(f"inputs are {tuple(inputs.shape[1:])} per sequence but baselines {tuple(baselines.shape[1:])}")


class PositiveProbability(nn.Module):
    """P(positive) (batch, 1) of a model that returns logits (batch,): what the sentiment explanations explain."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.model(x).unsqueeze(1))


def explainable_model(model: nn.Module, steps: int, dtype: torch.dtype) -> nn.Module:
    """The explainable copy in ``dtype``; a :class:`SentimentRNN` is wrapped to output P(positive)."""
    twin = make_explainable(model, steps)
    if isinstance(model, SentimentRNN):
        twin = PositiveProbability(twin)
    return twin.to(dtype).eval()


def prepare_inputs(twin: nn.Module, inputs: torch.Tensor, baselines: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """What the libraries are given: embeddings for token ids, the sequences themselves otherwise.

    Returns (x, bg, tokens): x (N, T, E or F), bg (B, T, E or F), and whether values are summed per token.
    """
    dtype = next(twin.parameters()).dtype
    device = next(twin.parameters()).device
    if inputs.is_floating_point():
        check_sequences(inputs, baselines)
        return inputs.to(device, dtype), baselines.to(device, dtype), False
    embeddings = [m for m in twin.modules() if isinstance(m, EmbeddingOrVectors)]
    if len(embeddings) != 1:
        raise UsageError(f"token ids need a model with exactly one nn.Embedding (found {len(embeddings)}); "
                         "pass embedded float inputs (N, T, E) instead")
    check_ids(inputs, baselines, embeddings[0].num_embeddings)
    with torch.no_grad():
        return embeddings[0](inputs.to(device)), embeddings[0](baselines.to(device)), True


class _LibraryExplainer:
    """Shared set-up: the explainable copy of ``model`` in ``dtype`` on the model's device."""

    method = ""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        self.model = model
        self.dtype = dtype

    def _prepare(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int):
        twin = explainable_model(self.model, inputs.shape[1], self.dtype)
        x, bg, tokens = prepare_inputs(twin, inputs, baselines)
        with torch.no_grad():
            n_out = twin(bg[:1]).shape[1]
        if not 0 <= target < n_out:
            raise UsageError(f"target {target} is not an output of this model (it has {n_out})")
        return twin, x, bg, tokens

    @staticmethod
    def _outputs(twin: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
        with torch.no_grad():
            return twin(x)[:, target].double().cpu().numpy()


class ShapDeepExplainer(_LibraryExplainer):
    """``shap.DeepExplainer`` on the explainable copy, with shap's additivity check on (its default)."""

    method = "shap"

    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int = 0) -> Attribution:
        import shap

        twin, x, bg, tokens = self._prepare(inputs, baselines, target)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            # shap warns once per unknown module ("unrecognized nn.Module": our Products and the
            # pass-through embedding) and passes its gradient through unchanged: the rule is in its backward.
            warnings.filterwarnings("ignore", message="unrecognized nn.Module")
            explainer = shap.DeepExplainer(twin, bg)
            phis = np.asarray(explainer.shap_values(x))[..., target]  # (N, T, E|F); raises if additivity fails
        seconds = time.perf_counter() - t0
        values = phis.sum(axis=2) if tokens else phis
        expected = float(np.atleast_1d(explainer.expected_value)[target])
        return Attribution(self.method, values.astype(np.float64), self._outputs(twin, x, target), expected, seconds)


class CaptumDeepLiftShap(_LibraryExplainer):
    """``captum.attr.DeepLiftShap`` on the explainable copy; ``per_call`` sequences per call bound memory.

    ``extra['max_abs_delta']`` holds, per sequence, the largest |convergence delta|
    Captum reports over its (sequence, baseline) pairs.
    """

    method = "captum"

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, per_call: int = 1) -> None:
        super().__init__(model, dtype)
        self.per_call = per_call

    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int = 0) -> Attribution:
        from captum.attr import DeepLiftShap

        if baselines.shape[0] < 2:
            raise UsageError("Captum's DeepLiftShap needs at least 2 background sequences; use --background >= 2")
        twin, x, bg, tokens = self._prepare(inputs, baselines, target)
        values, deltas = [], []
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*hooks.*")
            dls = DeepLiftShap(twin)
            for k in range(0, len(x), self.per_call):
                attr, delta = dls.attribute(x[k : k + self.per_call], baselines=bg, target=target,
                                            return_convergence_delta=True)
                attr = attr.detach().double().cpu()
                values.append(attr.sum(dim=2) if tokens else attr)
                deltas.append(delta.detach().double().cpu().view(-1, len(bg)).abs().max(dim=1).values)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            expected = float(twin(bg)[:, target].double().mean())
        return Attribution(self.method, torch.cat(values).numpy(), self._outputs(twin, x, target), expected, seconds,
                           extra={"max_abs_delta": torch.cat(deltas).numpy()})


class PlainFromEmbeddings(nn.Module):
    """Embedded input -> the model's plain nn.LSTM / nn.GRU -> Linear -> Sigmoid: what a user would hand the libraries.

    Neither library has a rule for recurrent modules; this exists to show what goes wrong.
    """

    def __init__(self, model: SentimentRNN) -> None:
        super().__init__()
        self.model, self.sigmoid = model, nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.model.fc(self.model.encode(x)))


def plain_rnn_failures(model: SentimentRNN, inputs: torch.Tensor, baselines: torch.Tensor) -> dict:
    """Run both libraries on the model with its plain ``nn.LSTM`` / ``nn.GRU`` and report how far they are from complete.

    Returns, per library, the largest completeness error (shap: sum of SHAP
    values minus (f(x) - E f); Captum: |convergence delta|) and, for shap,
    whether its own additivity check raised and with what message.
    """
    import shap
    from captum.attr import DeepLiftShap

    plain = PlainFromEmbeddings(model).eval()
    with torch.no_grad():
        x, bg = model.embedding(inputs), model.embedding(baselines)
        f_x = plain(x)[:, 0].double().numpy()
    report: dict = {"module": type(model.rnn).__name__}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        explainer = shap.DeepExplainer(plain, bg)
        try:
            explainer.shap_values(x)
            report["shap_additivity_check"] = "passed"
        except AssertionError as exc:
            report["shap_additivity_check"] = "raised: " + str(exc).split("!")[0] + "!"
        phis = np.asarray(explainer.shap_values(x, check_additivity=False))[..., 0]
        shap_res = phis.sum(axis=(1, 2)) - (f_x - float(np.atleast_1d(explainer.expected_value)[0]))
        _, delta = DeepLiftShap(plain).attribute(x, baselines=bg, target=0, return_convergence_delta=True)
    report["shap_max_abs_residual"] = float(np.abs(shap_res).max())
    report["captum_max_abs_delta"] = float(delta.abs().max())
    report["model_output_range"] = [float(f_x.min()), float(f_x.max())]
    return report
