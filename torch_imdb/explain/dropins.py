"""Drop-ins for shap and Captum users: their explainers' surfaces, this project's exact engines behind them.

``DeepExplainer(model, data)`` has ``shap.DeepExplainer``'s surface (``shap_values``,
``expected_value``, ``explainer(X)``) and ``DeepLiftShap(model)`` Captum's
(``attribute(inputs, baselines, target, additional_forward_args,
return_convergence_delta)``): change the import, keep the code. Behind both is the
fast engine (its own recurrence and heads where they take the model, else its
general path, the transform with the fused recurrence); every value is checked
to add up to f(x) - E f, computed by the model itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from torch_imdb.errors import UsageError
from torch_imdb.explain.backends import FusedDeepShap
from torch_imdb.explain.fast import FastDeepShap
from torch_imdb.explain.own import OwnOutputs


def _inputs(X, what: str):
    """A model's input as the engines take it: one tensor, or for a model of several inputs a tuple of tensors (a
    one-element list or tuple gives its tensor, as shap and Captum allow)."""
    if isinstance(X, (list, tuple)):
        if not X:
            raise UsageError(f"{what} is empty; pass a tensor, or one tensor per input of the model")
        bad = next((t for t in X if not isinstance(t, torch.Tensor)), None)
        if bad is not None:
            raise UsageError(f"{what} must hold torch tensors, got a {type(bad).__name__}")
        return X[0] if len(X) == 1 else tuple(X)
    if not isinstance(X, torch.Tensor):
        raise UsageError(f"{what} must be a torch tensor (or a list of them, one per input), got {type(X).__name__}")
    return X


def _parts(X) -> tuple:
    """The inputs as a tuple, one tensor or several."""
    return X if isinstance(X, tuple) else (X,)


def _rows(X) -> int:
    return len(_parts(X)[0])


def _dtype_of(x, model: nn.Module) -> torch.dtype:
    """The explained dtype: the first float input's, else (token ids) the model's weights', float32 by default."""
    floats = [t.dtype for t in _parts(x) if t.is_floating_point()]
    if floats:
        return floats[0]
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _stack(values: list):
    """Values for each of K outputs (arrays, or tuples of arrays for several inputs) with K as a last axis: an array,
    or a list of arrays, one per input, as shap gives them."""
    if isinstance(values[0], tuple):
        return [np.stack([v[i] for v in values], axis=-1) for i in range(len(values[0]))]
    return np.stack(values, axis=-1)


def _forward_args(additional_forward_args) -> tuple:
    """Captum's ``additional_forward_args`` as a tuple: None gives (), a single object (it,)."""
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return () if additional_forward_args is None else (additional_forward_args,)


def _target(target: int | None, outputs: int) -> int:
    """Captum's target: None means the model's only output (a one-line error where it has several)."""
    if target is None and outputs != 1:
        raise UsageError(f"the model has {outputs} outputs: pass target=")
    return 0 if target is None else target


class DeepExplainer:
    """``shap.DeepExplainer(model, data)`` for PyTorch models built around ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
    (and any model the transform takes), exact: the values add up to f(x) - E f.

    Args:
        model: the module; it takes token ids (N, T) or float sequences (N, T, F) and returns (N,) or (N, K). A model
            of several inputs (token ids and float features, say) takes them as its first arguments.
        data: the background (B, T) or (B, T, F), or a list of them, one per input of the model (as shap takes it).

    Attributes:
        expected_value: (K,) the mean output over the background, as shap gives it.
    """

    def __init__(self, model: nn.Module, data) -> None:
        self.data = _inputs(data, "data")
        self.dtype = _dtype_of(self.data, model)
        self.engine = FastDeepShap(model, self.dtype)
        self.own = self.engine.own  # the model as it is: one copy, the engine's guard's
        self.expected_value = self.own(self.data).double().mean(dim=0).cpu().numpy()

    def shap_values(self, X, ranked_outputs: int | None = None, output_rank_order: str = "max",
                    check_additivity: bool = True):
        """The SHAP values of X (N, T) ids or (N, T, F) floats, as shap returns them.

        Returns:
            (N, T, K) for ids (one value per token) or (N, T, F, K) for floats, K the model's outputs;
            for a list of inputs, a list of such arrays, one per input;
            with ``ranked_outputs`` R: (values (N, ..., R), ranks (N, R)), the R outputs of each input ranked by
            ``output_rank_order`` ("max", "min", "max_abs").

        Raises:
            CompletenessError: values that do not add up (unless ``check_additivity=False``).
        """
        X = _inputs(X, "X")
        self.engine.check = check_additivity
        K = len(self.expected_value)
        if ranked_outputs is None:
            return _stack([self._values(X, k) for k in range(K)])
        outputs = self.own(X).double()
        order = {"max": -outputs, "min": outputs, "max_abs": -outputs.abs()}.get(output_rank_order)
        if order is None:
            raise UsageError(f"output_rank_order must be max, min or max_abs, got {output_rank_order!r}")
        ranks = torch.argsort(order, dim=1, stable=True)[:, :ranked_outputs]
        values = None
        for k in ranks.unique().tolist():  # each output once, for the inputs that rank it
            by_k = self._values(X, k)
            parts = by_k if isinstance(by_k, tuple) else (by_k,)
            if values is None:
                values = [np.zeros((*v.shape, ranks.shape[1])) for v in parts]
            for n, r in zip(*np.nonzero((ranks == k).numpy())):
                for out, v in zip(values, parts):
                    out[n, ..., r] = v[n]
        return (values if isinstance(X, tuple) else values[0]), ranks.numpy()

    def _values(self, X, target: int):
        return self.engine.attribute(X, self.data, target).values

    def __call__(self, X):
        """A ``shap.Explanation`` of X: values (N, T) or (N, T, F) for a one-output model (a last axis K
        otherwise), base_values each input's E f (its own where masks come from its ids), data X. For a list of
        inputs, a list of Explanations, one per input, with the same base values."""
        import shap

        X = _inputs(X, "X")
        results = [self.engine.attribute(X, self.data, k) for k in range(len(self.expected_value))]
        base = np.stack([np.broadcast_to(r.expected_value, (_rows(X),)) for r in results], axis=-1)
        values = _stack([r.values for r in results])
        one = base.shape[-1] == 1
        explanations = [shap.Explanation(values=v[..., 0] if one else v, base_values=base[..., 0] if one else base,
                                         data=x.detach().cpu().numpy())
                        for v, x in zip(values if isinstance(X, tuple) else [values], _parts(X))]
        return explanations if isinstance(X, tuple) else explanations[0]


class DeepLiftShap:
    """``captum.attr.DeepLiftShap(model)`` for PyTorch models built around ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``
    (and any model the transform takes), exact.

    ``attribute(inputs, baselines, target=None, additional_forward_args=None, return_convergence_delta=False)``:
    inputs (N, T) ids or (N, T, F) floats, or a tuple of them, one per input of the model (returned as a tuple,
    as Captum does); baselines (B, ...) likewise. Returns the attributions (N, T) per token or (N, T, F), and with
    ``return_convergence_delta`` each input's completeness error (N,).
    """

    def __init__(self, model: nn.Module, multiply_by_inputs: bool = True) -> None:
        if not multiply_by_inputs:
            raise UsageError("multiply_by_inputs=False (multipliers without the input differences) is not offered")
        self.model = model
        self._engine = None

    def attribute(self, inputs, baselines, target: int | None = None, additional_forward_args=None,
                  return_convergence_delta: bool = False):
        """Attributions of inputs (N, T) token ids or (N, T, F) floats (or a tuple of them, one per input of the
        model) against baselines (B, T[, F]) (a tuple likewise) at output ``target`` (None: the model's only
        output), with ``additional_forward_args`` one row per input as Captum passes them.

        Returns:
            (N, T) per token or (N, T, F) (a tuple, one per input, when inputs were a tuple), and with
            ``return_convergence_delta`` each input's completeness error (N,) over all of its inputs.
        """
        tupled = isinstance(inputs, tuple)
        x, bg = _inputs(inputs, "inputs"), _inputs(baselines, "baselines")
        extra = _forward_args(additional_forward_args)
        # one engine per baselines and dtype: its background trace and output count are kept between calls
        # (a tuple of baselines is a new tuple each call: compared part by part)
        dtype = _dtype_of(x, self.model)
        key = (tuple(map(id, bg)) if isinstance(bg, tuple) else id(bg), dtype)
        if self._engine is None or self._engine[0] != key:
            engine = FastDeepShap(self.model, dtype)
            self._engine = (key, engine, engine.own.n_outputs(bg, extra), bg)  # bg kept alive: its id stays its own
        _, engine, outputs, _ = self._engine
        res = engine.attribute(x, bg, _target(target, outputs), extra)
        values = tuple(torch.from_numpy(v).to(dtype) for v in _parts(res.values))
        values = values if tupled else values[0]
        return (values, torch.from_numpy(res.residual)) if return_convergence_delta else values


class LayerDeepLiftShap:
    """``captum.attr.LayerDeepLiftShap(model, layer)``: DeepLIFT-SHAP attributions to a layer's outputs (or inputs),
    exact, through the transform with the recurrence as its fused rule.

    Each of the layer's output tensors (an ``nn.LSTM``'s ``(output, (h_n, c_n))`` gives three: its per-step
    outputs and final states) gets multiplier x (input's value - reference's), averaged over the baselines.
    Where every path from the input to the output passes through the layer, they add up to f(x) - E f; a path
    around it (a residual, a head reading the embedding) carries the rest, and ``return_convergence_delta`` gives
    that rest per input. The input-level values of the same backward pass are checked against the model first.
    """

    def __init__(self, model: nn.Module, layer: nn.Module, multiply_by_inputs: bool = True) -> None:
        if not multiply_by_inputs:
            raise UsageError("multiply_by_inputs=False (multipliers without the differences) is not offered")
        self.model, self.layer = model, layer

    def attribute(self, inputs, baselines, target: int | None = None, additional_forward_args=None,
                  return_convergence_delta: bool = False, attribute_to_layer_input: bool = False):
        """Attributions to the layer of inputs (N, T) token ids or (N, T, F) floats (or a tuple of them, one per
        input of the model) against baselines (B, T[, F]) (a tuple likewise).

        Returns:
            the layer's attributions in its own layout, the batch where the layer holds it: a tensor for a layer
            of one tensor, a tuple for several (``(output, h_n, c_n)`` for an ``nn.LSTM``), and a list with one
            such entry per call for a layer called more than once (at every step, or twice); with
            ``return_convergence_delta`` also (N,): the layer's total minus (f(x) - E f), zero up to rounding
            where every path passes through the layer, the share that goes around it elsewhere.

        Raises:
            CompletenessError: input-level values of the same pass that do not add up to the model's output.
        """
        x, bg = _inputs(inputs, "inputs"), _inputs(baselines, "baselines")
        extra = _forward_args(additional_forward_args)
        dtype = _dtype_of(x, self.model)
        if target is None:
            target = _target(target, OwnOutputs(self.model, dtype).n_outputs(bg, extra))
        engine = FusedDeepShap(self.model, dtype, layer=self.layer, layer_input=attribute_to_layer_input)
        res = engine.attribute(x, bg, target, extra)
        calls = [tuple(torch.from_numpy(t).to(dtype) for t in call) for call in res.extra["layer"]]
        calls = [call[0] if len(call) == 1 else call for call in calls]
        values = calls[0] if len(calls) == 1 else calls
        if not return_convergence_delta:
            return values
        delta = res.extra["layer_total"] - (res.outputs - res.expected_value)
        return values, torch.from_numpy(delta)
