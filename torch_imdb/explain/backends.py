"""shap.DeepExplainer and Captum DeepLiftShap on the explainable copy of a model, behind one interface.

Every explainer here follows :class:`~torch_imdb.explain.api.Explainer`:

    attribute(inputs, baselines, target=0, additional_forward_args=()) -> Attribution

``inputs`` are either token ids (N, T) of the sequences to explain, with
``baselines`` ids (B, T) of the background, or float sequences (N, T, F) and
(B, T, F). For token ids the attributions are taken at the embedding output
and summed over its dimensions: one value per token (N, T). For float inputs
there is one value per step and feature (N, T, F).

The model can be any ``nn.Module`` built from layers the libraries handle plus
``nn.LSTM`` / ``nn.GRU`` (replaced by the explainable twin, see
:func:`~torch_imdb.explain.twin.make_explainable`). Its output (N, K) is
explained at column ``target``. The project's models (:class:`~torch_imdb.model.ReviewClassifier`)
return logits (N,); they are explained as P(positive) (N, 1).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from torch_imdb.errors import CompletenessError, UsageError
from torch_imdb.explain.api import (Attribution, check_completeness, check_extra, check_ids, check_sequences,
                                    off_tolerance)
from torch_imdb.explain.inputs import check_several, several
from torch_imdb.explain.marks import batch_dim
from torch_imdb.explain.own import OwnOutputs, PositiveProbability
from torch_imdb.explain.stack import on_pairs
from torch_imdb.explain.transform import ExplainableModel, make_explainable
from torch_imdb.model import ReviewClassifier, SentimentRNN


def explainable_model(model: nn.Module, steps: int, dtype: torch.dtype, output: int | str | None = None,
                      extra_rules=None, fused: bool = False) -> ExplainableModel:
    """The explainable copy in ``dtype``; a :class:`~torch_imdb.model.ReviewClassifier` is explained as P(positive)."""
    if isinstance(model, ReviewClassifier):
        model = PositiveProbability(model)
    return make_explainable(model, steps, output, extra_rules, fused).to(dtype).eval()


class _LibraryExplainer:
    """What both library explainers share: the explainable copy of ``model`` in ``dtype``, its inputs, its base
    values and :meth:`attribute`; each library gives only ``_values``.

    ``output`` selects the explained entry of a tuple or dict output; ``check_completeness``
    False turns the guard's error into residuals returned with the values; ``extra_rules`` (op name ->
    :class:`~.transform.Rule`) join the transform's rules; ``fused`` runs the recurrent modules as the fast
    engine's fused rule (the same values).
    """

    method = ""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, output: int | str | None = None,
                 check_completeness: bool = True, extra_rules=None, fused: bool = False) -> None:
        self.model = model
        self.dtype = dtype
        self.output = output
        self.check = check_completeness
        self.extra_rules = extra_rules
        self.fused = fused
        self.n_outputs: int | None = None  # the model's outputs K, known after the first call
        self._own: OwnOutputs | None = None  # the user's module as it is, what the guard checks against

    def _prepare(self, inputs, baselines, target: int, additional_forward_args: tuple = ()):
        """(the explainable copy, the explained inputs (N, ...), the background (B, ...), the inputs' token ids or
        None, the further forward arguments), checked; a tuple of inputs is laid out as one (see :mod:`.inputs`)."""
        if several(inputs):
            return self._prepare_several(inputs, baselines, target, additional_forward_args)
        if not isinstance(inputs, torch.Tensor) or not isinstance(baselines, torch.Tensor):
            raise UsageError("inputs and baselines must be tensors, or tuples of tensors for a model of several "
                             "inputs; pass further forward arguments as additional_forward_args=(...)")
        if inputs.dim() < 2:
            raise UsageError(f"inputs must be (n, T) token ids or (n, T, F) sequences, got {tuple(inputs.shape)}")
        twin = explainable_model(self.model, inputs.shape[1], self.dtype, self.output, self.extra_rules, self.fused)
        device = next(twin.parameters()).device
        extra = check_extra(additional_forward_args, len(inputs), device)
        if inputs.is_floating_point():
            check_sequences(inputs, baselines)
            x, bg, ids, bg_ids = inputs.to(device, self.dtype), baselines.to(device, self.dtype), None, None
        else:
            if not twin.tokens:
                raise UsageError("token ids need a model with an nn.Embedding; pass float inputs (N, T, F) instead")
            check_ids(inputs, baselines, twin.vocab_size())
            ids, bg_ids = inputs.to(device), baselines.to(device)
            x, bg = twin.embed(ids).to(self.dtype), twin.embed(bg_ids).to(self.dtype)
        self._check_target(baselines, extra, target)
        return twin, x, bg, ids, extra

    def _prepare_several(self, inputs, baselines, target: int, additional_forward_args: tuple):
        """:meth:`_prepare` for a tuple of inputs: their explained values and token ids put side by side, the copy
        told where each lies."""
        layout = check_several(inputs, baselines)
        twin = explainable_model(self.model, layout.steps, self.dtype, self.output, self.extra_rules, self.fused)
        device = next(twin.parameters()).device
        n, B = len(inputs[0]), len(baselines[0])
        extra = check_extra(additional_forward_args, n, device)

        def on_device(tensors):
            return [t.to(device, self.dtype) if t.is_floating_point() else t.to(device) for t in tensors]

        inputs, baselines = on_device(inputs), on_device(baselines)
        x = twin.embed_inputs(inputs, extra)
        bg = twin.embed_inputs(baselines, self._rows(None, extra, slice(0, 1), B)[1:])
        twin.layout = layout.with_widths([v.shape[-1] for v in x])
        x, bg = twin.layout.pack(x).to(self.dtype), twin.layout.pack(bg).to(self.dtype)
        ids = twin.layout.pack_ids(inputs)
        self._check_target(baselines, extra, target)
        return twin, x, bg, ids, extra

    def _check_target(self, baselines, extra: tuple, target: int) -> None:
        """Learns the model's outputs (:attr:`n_outputs`) from the user's own module (one background row, at its
        own speed: the copy unrolls its recurrences); a one-line error unless ``target`` is one of them."""
        self.n_outputs = self._own_model().n_outputs(baselines, extra)
        if not 0 <= target < self.n_outputs:
            raise UsageError(f"target {target} is not an output of this model (it has {self.n_outputs})")

    @staticmethod
    def _per_input(twin, ids, values: np.ndarray):
        """Values of the explained tensor as the inputs': per token for token ids (each token's share summed over
        its embedding), and for a tuple of inputs one array per input."""
        if twin.layout is not None:
            return twin.layout.values(values)
        return values.sum(axis=2) if ids is not None else values

    @staticmethod
    def _rows(ids, extra: tuple, rows: slice, repeat: int = 1) -> tuple:
        """(ids, *extra) of the inputs ``rows``, each row repeated ``repeat`` times: the constants the copy sees."""
        def take(a):
            if not isinstance(a, torch.Tensor):
                return a
            a = a[rows]
            return a.repeat_interleave(repeat, dim=0) if repeat > 1 else a
        return (take(ids), *(take(a) for a in extra))

    @staticmethod
    def _one_base(twin, extra: tuple) -> bool:
        """Whether all inputs share one base value: the model reads no constants from them (no mask from the ids, no
        extra tensor), so the base is one float rather than one per input."""
        return not twin.ids_read and not any(isinstance(a, torch.Tensor) for a in extra)

    def _outputs_and_base(self, twin, x, bg, ids, extra, target: int) -> tuple[np.ndarray, np.ndarray | float]:
        """f(x) (N,) and E_r f(r): the background is run with each input's constants (the masks computed
        from its ids, its extra arguments), so the base value is per input (N,) where the model has
        such constants, and one float where it has none."""
        B = len(bg)
        with torch.no_grad():
            f_x = twin(x, *self._rows(ids, extra, slice(None)))[:, target].double().cpu().numpy()
            first = twin(bg, *self._rows(ids, extra, slice(0, 1), B))[:, target].double().mean()
            if self._one_base(twin, extra):
                return f_x, float(first)
            per = max(1, 4096 // B)
            base = []
            for k in range(0, len(x), per):
                n = min(per, len(x) - k)
                out = twin(bg.repeat(n, *([1] * (bg.dim() - 1))), *self._rows(ids, extra, slice(k, k + n), B))
                base.append(out[:, target].double().view(n, B).mean(dim=1).cpu().numpy())
        return f_x, np.concatenate(base)

    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int = 0,
                  additional_forward_args: tuple = ()) -> Attribution:
        """Attribute ``inputs`` against ``baselines`` at output ``target``: an :class:`Attribution`.

        inputs: token ids (N, T) or float sequences (N, T, F); baselines: (B, T) or
        (B, T, F), the reference set. additional_forward_args: further arguments of
        the model's forward, the same for inputs and baselines. Returns values (N, T)
        (per token) or (N, T, F), outputs f(x) (N,), the expected value E f over the
        baselines (a float, or (N,) when the model reads constants from its inputs,
        such as a padding mask) and the completeness residuals (N,). Raises
        :class:`~torch_imdb.errors.CompletenessError` when a residual exceeds the
        guard's tolerance (unless the explainer was made with check_completeness=False).
        """
        twin, x, bg, ids, extra = self._prepare(inputs, baselines, target, additional_forward_args)
        t0 = time.perf_counter()
        values, extra_info, outputs = self._values(twin, x, bg, ids, extra, target)
        seconds = time.perf_counter() - t0
        f_x, base = outputs or self._outputs_and_base(twin, x, bg, ids, extra, target)
        f_x = self._own_outputs(inputs, extra, target, f_x)
        result = Attribution(self.method, values, f_x, base, seconds, extra=extra_info)
        return check_completeness(result, self.dtype, self.check)

    def _own_outputs(self, inputs, extra: tuple, target: int, by_copy: np.ndarray) -> np.ndarray:
        """f(x) (N,) by the user's own module, untouched (:class:`~.own.OwnOutputs`): what the guard checks the
        values against. The explainable copy's f(x) ``by_copy`` (N,) must agree within the guard's tolerance, else
        the copy computes another function and its values are refused in one line."""
        own = self._own_model()(inputs, *extra)[:, target].double().cpu().numpy()
        off = off_tolerance(by_copy, own, self.dtype)
        if self.check and off.any():
            k = int(np.argmax(off))
            raise CompletenessError(f"{self.method}: f(x) of input {k} through the explainable copy is {by_copy[k]:.6g} "
                                    f"but the model's own is {own[k]:.6g}: the copy computes another function; "
                                    "report the model's forward, or pass check_completeness=False to see the values")
        return own

    def _own_model(self) -> OwnOutputs:
        """The user's module as it is (made on first use)."""
        if self._own is None:
            self._own = OwnOutputs(self.model, self.dtype, self.output)
        return self._own

    def _values(self, twin, x, bg, ids, extra, target) -> tuple[np.ndarray, dict, tuple | None]:
        """The library's values (N, T) or (N, T, F) of the prepared inputs, what else it reports, and the copy's
        (f(x), base) (:meth:`_outputs_and_base`'s) where its own passes gave them, else None."""
        raise NotImplementedError


class _SideInputs(nn.Module):
    """shap's view of the copy: ``forward(x)`` alone, the constants of one input (ids, extra) repeated
    over whatever batch shap runs (shap has no additional forward arguments)."""

    def __init__(self, twin: ExplainableModel) -> None:
        super().__init__()
        self.twin = twin
        self.side: tuple = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = tuple(a.expand(len(x), *a.shape[1:]) if isinstance(a, torch.Tensor) else a for a in self.side)
        return self.twin(x, *side)


class ShapDeepExplainer(_LibraryExplainer):
    """``shap.DeepExplainer`` on the explainable copy, one input at a time (each with its own constants)."""

    method = "shap"

    def _values(self, twin, x, bg, ids, extra, target) -> tuple[np.ndarray, dict, None]:
        import shap

        adapter = _SideInputs(twin)
        phis = []
        with warnings.catch_warnings():
            # shap warns once per module type it has no rule for and passes its gradient through:
            # the transform's rules are in the ops themselves.
            warnings.filterwarnings("ignore", message="unrecognized nn.Module")
            adapter.side = self._rows(ids, extra, slice(0, 1))
            explainer = shap.DeepExplainer(adapter, bg)
            for k in range(len(x)):
                adapter.side = self._rows(ids, extra, slice(k, k + 1))
                phi = np.asarray(explainer.shap_values(x[k : k + 1], check_additivity=False))
                phis.append(phi[..., target])  # (1, T, E|F)
        return self._per_input(twin, ids, np.concatenate(phis).astype(np.float64)), {}, None


class CaptumDeepLiftShap(_LibraryExplainer):
    """``captum.attr.DeepLiftShap`` on the explainable copy; ``per_call`` sequences per call bound memory.

    ``extra['max_abs_delta']`` holds, per sequence, the largest |convergence delta|
    Captum reports over its (sequence, baseline) pairs.
    """

    method = "captum"

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, per_call: int = 1, **options) -> None:
        super().__init__(model, dtype, **options)
        self.per_call = per_call

    def _values(self, twin, x, bg, ids, extra, target) -> tuple[np.ndarray, dict, None]:
        from captum.attr import DeepLiftShap

        if len(bg) < 2:
            raise UsageError("Captum's DeepLiftShap needs at least 2 background sequences; use --background >= 2")
        values, deltas = [], []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*hooks.*")
            dls = DeepLiftShap(twin)
            for k in range(0, len(x), self.per_call):
                rows = slice(k, k + self.per_call)
                attr, delta = dls.attribute(x[rows], baselines=bg, target=target, return_convergence_delta=True,
                                            additional_forward_args=self._rows(ids, extra, rows))
                values.append(attr.detach().double().cpu())
                deltas.append(delta.detach().double().cpu().view(-1, len(bg)).abs().max(dim=1).values)
        return self._per_input(twin, ids, torch.cat(values).numpy()), {"max_abs_delta": torch.cat(deltas).numpy()}, None


class FusedDeepShap(_LibraryExplainer):
    """DeepLIFT-SHAP through the transform, without a library: every (input, reference) pair of a chunk in one
    batch of the explainable copy, whose recurrent modules run as the fast engine's fused rule
    (:class:`~.stack.FusedRecurrence`: each distinct row traced once, the multipliers of all pairs in one fused
    backward). Any model the transform takes (a front end, two recurrent modules, a head reading the embedding,
    ...); the same values as shap and Captum. ``chunk_pairs`` bounds the pairs per batch; ``compile``
    compiles the fused rule's windows of steps, as the fast engine's ``compile`` does.

    ``layer`` (a submodule of ``model``) also attributes to that layer's outputs (its inputs with
    ``layer_input=True``), each call of it: the multipliers the same backward gives there, times the layer's
    differences between input and reference, averaged over the references. They land in the result's
    ``extra["layer"]``: one tuple per call, one array per tensor the layer gives (or takes), in its layout.
    """

    method = "fused"

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, chunk_pairs: int = 2048,
                 layer: nn.Module | None = None, layer_input: bool = False, compile: bool = False,
                 **options) -> None:
        super().__init__(model, dtype, **{"fused": True, **options})
        self.chunk_pairs, self.compile = chunk_pairs, compile
        self._stacks: dict = {}  # the copy's recurrent modules' stacks by name, kept for the next call's copy
        self.layer, self.layer_input = layer, layer_input
        if layer is not None:
            self.layer_name = submodule_name(model, layer)

    def _values(self, twin, x, bg, ids, extra, target) -> tuple[np.ndarray, dict, tuple]:
        """The values, and f(x) and the base from the pair batches' own outputs: the input half's are f(x), the
        reference half's f(r) with each input's constants, so the copy needs no other pass."""
        B, values, layer_parts, f_x, base = len(bg), [], [], [], []
        per = max(1, self.chunk_pairs // B)
        for k in range(0, len(x), per):
            inputs = x[k:k + per]
            n = len(inputs)
            consts = tuple(torch.cat([a.repeat(B, *([1] * (a.dim() - 1)))] * 2) if isinstance(a, torch.Tensor) else a
                           for a in self._rows(ids, extra, slice(k, k + n)))  # each pair sees its input's constants
            # pair p = b * n + i: input i with reference b, backgrounds first, as the fused rule's grid reads them
            batch = on_pairs(inputs, bg).detach().requires_grad_(True)
            for name, module in twin.named_modules():  # the layout, told rather than searched for by the fused rule
                if hasattr(module, "grid_shape"):
                    module.grid_shape, module.compile = (B, n), self.compile
                    module.stack = module.stack or self._stacks.get(name)  # its reference traces, if it fits
            with torch.enable_grad(), LayerWatch(self._twin_layer(twin)) as watch:
                y = twin(batch, *consts)[:, target]
                grads = torch.autograd.grad(y.sum(), [batch, *watch.tensors], allow_unused=True)
            y = y.detach().double().view(2, B, n)
            f_x.append(y[0, 0].cpu())
            base.append(y[1].mean(dim=0).cpu())
            share = grads[0][: B * n].view(B, n, *inputs.shape[1:]) * (inputs.unsqueeze(0) - bg.unsqueeze(1))
            values.append(share.mean(dim=0).detach().double().cpu())
            if self.layer is not None:
                layer_parts.append(watch.shares(grads[1:], B, n))
        self._stacks = {name: m.stack for name, m in twin.named_modules() if getattr(m, "stack", None) is not None}
        info = {} if self.layer is None else LayerWatch.join(layer_parts)
        base = torch.cat(base).numpy()
        if self._one_base(twin, extra):
            base = float(base[0])
        return self._per_input(twin, ids, torch.cat(values).numpy()), info, (torch.cat(f_x).numpy(), base)

    def _twin_layer(self, twin: ExplainableModel) -> tuple[nn.Module, bool] | None:
        """The copy's module in the place of the user's ``layer``, and whether its inputs are watched."""
        if self.layer is None:
            return None
        root = twin.model.model if isinstance(twin.model, PositiveProbability) else twin.model
        return root.get_submodule(self.layer_name), self.layer_input


def submodule_name(model: nn.Module, layer: nn.Module) -> str:
    """The qualified name of ``layer`` in ``model``; a one-line error when it is not one of its modules."""
    name = next((name for name, m in model.named_modules() if m is layer), None)
    if name is None or name == "":
        raise UsageError(f"the layer ({type(layer).__name__}) is not a submodule of the model: pass one of "
                         "model.named_modules(), e.g. model.rnn")
    return name


class LayerWatch:
    """Holds, during one forward pass of a pair batch, the tensors a module gives (or takes) at each call, with
    where each holds the batch; :meth:`shares` turns their multipliers into the layer's attributions."""

    def __init__(self, target: tuple[nn.Module, bool] | None) -> None:
        self.target, self.tensors, self.calls, self.handle = target, [], [], None

    def __enter__(self) -> "LayerWatch":
        if self.target is not None:
            module, inputs = self.target
            if inputs:
                self.handle = module.register_forward_pre_hook(lambda m, args: self._take(args))
            else:
                self.handle = module.register_forward_hook(lambda m, args, out: self._take(out))
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()

    def _take(self, found) -> None:
        if any(isinstance(t, PackedSequence) for t in [found, *(found if isinstance(found, (tuple, list)) else [])]):
            raise UsageError("the layer gives or takes a PackedSequence, whose rows are not one input each: choose "
                             "the layer after pad_packed_sequence, or attribute to another layer")
        flat = [t for t in _flatten(found) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        dims = [batch_dim(t) for t in flat]
        self.calls.append(list(zip(range(len(self.tensors), len(self.tensors) + len(flat)), dims)))
        self.tensors.extend(flat)

    def shares(self, grads, B: int, n: int) -> list[tuple[torch.Tensor, ...]]:
        """Per call, per tensor: multiplier x (input's - reference's), averaged over the B references, (n, ...)
        with the batch back in its dim."""
        out = []
        for call in self.calls:
            parts = []
            for index, dim in call:
                t, g = self.tensors[index].movedim(dim, 0), grads[index]
                if len(t) != 2 * B * n:
                    raise UsageError(f"the layer's tensor {tuple(self.tensors[index].shape)} does not hold one row "
                                     "per input (the model merged the batch with another dim before it): attribute "
                                     "to a layer that keeps the batch a dim of its own")
                g = torch.zeros_like(t) if g is None else g.movedim(dim, 0)
                share = (g[: B * n] * (t[: B * n] - t[B * n:])).detach()
                parts.append((share.view(B, n, *share.shape[1:]).mean(dim=0).double().cpu(), dim))
            out.append(tuple(parts))
        return out

    @staticmethod
    def join(chunks: list) -> dict:
        """The chunks' shares put together: ``layer`` per call, per tensor, the batch back in its dim; and
        ``layer_total`` (N,), each input's sum over them all."""
        if not chunks or not chunks[0]:
            raise UsageError("the layer was not called on the explained input: choose a layer the input reaches")
        whole = [[torch.cat([c[call][j][0] for c in chunks]) for j in range(len(chunks[0][call]))]
                 for call in range(len(chunks[0]))]
        total = sum(t.reshape(len(t), -1).sum(dim=1) for call in whole for t in call)
        return {"layer": [tuple(t.movedim(0, chunks[0][call][j][1]).numpy() for j, t in enumerate(tensors))
                          for call, tensors in enumerate(whole)], "layer_total": total.numpy()}


def _flatten(found) -> list:
    """The tensors of a module's output or inputs, nested tuples and lists in order ((out, (h, c)) -> out, h, c)."""
    if isinstance(found, (tuple, list)):
        return [t for item in found for t in _flatten(item)]
    return [found]


class PlainFromEmbeddings(nn.Module):
    """Embedded input -> the model's plain nn.LSTM / nn.GRU -> Linear -> Sigmoid: what a user would hand the libraries.

    Neither library has a rule for recurrent modules; this exists to show what goes wrong.
    """

    def __init__(self, model: SentimentRNN) -> None:
        super().__init__()
        self.model, self.sigmoid = model, nn.Sigmoid()

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """P(positive) (batch, 1) of embedded reviews x (batch, T, E); ``tokens`` (batch, T) bool marks the words
        (not padding), which pooled models need (pass it to Captum as ``additional_forward_args``)."""
        return self.sigmoid(self.model.fc(self.model.encode(x, tokens)))


def plain_rnn_failures(model: SentimentRNN, inputs: torch.Tensor, baselines: torch.Tensor) -> dict | None:
    """Run both libraries on the model with its plain ``nn.LSTM`` / ``nn.GRU`` and report how far they are from complete.

    Returns, per library, the largest completeness error (shap: sum of SHAP
    values minus (f(x) - E f); Captum: |convergence delta|) and, for shap,
    whether its own additivity check raised and with what message; None for a model of another shape.
    """
    import shap
    from captum.attr import DeepLiftShap

    # the control is the Keras example's shape fed embeddings alone: a pooled head needs the ids for its padding
    # mask, and another architecture has no embeddings -> recurrence -> Linear to hand over
    if not isinstance(model, SentimentRNN) or model.config.pool != "last":
        return None
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
