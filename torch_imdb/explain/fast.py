"""An exact DeepSHAP engine for LSTM and GRU models, with no module hooks.

It computes the values shap.DeepExplainer gives on the explainable twin
(rescale rule for sigmoid/tanh with shap's near-zero fallback, the Shapley rule
for the products inside the cells, linear maps exact, averaged over the
background) by doing only the work that differs between (input, background) pairs:

- the background's forward pass runs once and is cached across calls;
- each input's forward pass runs once, not B times;
- the backward pass of multipliers runs on all (background x input) pairs of a
  chunk at once, as (B, n, ...) broadcasts of per-row quantities, layer by layer
  from the head down, each direction in its own time order, in windows of 8 steps
  that ``compile=True`` turns into one graph each (one fused kernel per step
  between two matrix products);
- the matrix products run through oneDNN on CPU (:mod:`.onednn`);
- for token ids, a token's attribution comes straight from the input-projection
  difference: sum_e grad_x[e] (x_t - r_t)[e] = grad_z . (W_ih x_t - W_ih r_t), and
  W_ih x_t is a per-row quantity, so no (pairs, T, E) tensor is formed. Float
  inputs (N, T, F) get one value per step and feature.

Models: any module built around one ``nn.LSTM`` / ``nn.GRU`` (any layers, either
direction, batch first or not) that reads token ids through an ``nn.Embedding`` or
float sequences, whatever its head does with the recurrent outputs and final states
(pooling, attention, MLPs, LayerNorm, tuple or dict outputs): the head's multipliers
come from :mod:`.head`, in closed form for a Linear on the final state
(:meth:`FastDeepShap.from_parts`, a :class:`~torch_imdb.model.SentimentRNN` reading
its final state) and for a SentimentRNN's mean or attention pooling, else through
the transform's rules on the pairs. A model that packs its sequences runs each input
over its own steps, its inputs taken in order of length. The cells'
equations and rules live in :mod:`.cells`, shared with the twin.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torch_imdb.errors import OutputMismatch, ShapeRefusal, UsageError
from torch_imdb.explain.api import (Attribution, check_completeness, check_extra, check_ids, check_sequences,
                                    completeness_tolerance, guard, off_tolerance)
from torch_imdb.explain.backends import explainable_model
from torch_imdb.explain.inputs import several
from torch_imdb.explain.head import LIBRARIES_HINT, TRACE_ROWS, LinearHead, PooledHead, RuledHead
from torch_imdb.cells import RECURRENT_MODULES
from torch_imdb.explain.stack import RecurrentStack, Trace, padded_rows
from torch_imdb.explain.own import OwnOutputs, RNNParts, weights_stamp
from torch_imdb.progress import Progress
from torch_imdb.model import SentimentRNN


def _only(model: nn.Module, kinds: tuple, what: str) -> nn.Module | None:
    found = [m for m in model.modules() if isinstance(m, kinds)]
    if len(found) > 1:
        raise ShapeRefusal(f"the fast engine explains models with one {what} module, this one has {len(found)}; "
                         + LIBRARIES_HINT)
    return found[0] if found else None


def model_parts(model, dtype: torch.dtype, output: int | str | None = None, compile: bool = False,
                extra_rules: dict | None = None):
    """(rnn, embedding or None, head) of a model, or a one-line error naming the transform.

    A :class:`RNNParts` or a :class:`~torch_imdb.model.SentimentRNN` reading its final state gets
    the closed-form :class:`~.head.LinearHead`, a SentimentRNN pooling by mean or attention the
    closed-form :class:`~.head.PooledHead`; any other module with one ``nn.LSTM`` / ``nn.GRU``
    gets the :class:`~.head.RuledHead`, its own forward pass run through the transform's rules.
    """
    if isinstance(model, SentimentRNN) and model.config.pool == "last":
        model = RNNParts(model.rnn, model.fc, model.embedding, "sigmoid")
    if isinstance(model, SentimentRNN) and model.config.pool in PooledHead.POOLS and output is None:
        return model.rnn, model.embedding, PooledHead(model, dtype, compile)
    if isinstance(model, RNNParts):
        rnn, embedding = model.rnn, model.embedding
        if not isinstance(model.head, nn.Linear):
            raise UsageError(f"RNNParts needs an nn.Linear head on the final hidden state, got {model.head!r}; "
                             "pass the whole model instead")
    elif isinstance(model, nn.Module):
        rnn = _only(model, RECURRENT_MODULES, "nn.LSTM / nn.GRU / nn.RNN")
        embedding = _only(model, (nn.Embedding,), "nn.Embedding")
        if rnn is None:
            raise ShapeRefusal(f"the fast engine explains models built around an nn.LSTM / nn.GRU / nn.RNN; "
                             f"{type(model).__name__} has none")
    else:
        raise UsageError(f"the fast engine takes an nn.Module or RNNParts, not a {type(model).__name__}")
    if not isinstance(rnn, RECURRENT_MODULES) or getattr(rnn, "proj_size", 0):
        raise UsageError(f"the fast engine needs an nn.LSTM / nn.GRU / nn.RNN without proj_size, got {rnn!r}; "
                         + LIBRARIES_HINT)
    if embedding is not None and embedding.embedding_dim != rnn.input_size:
        raise ShapeRefusal(f"the fast engine needs the recurrent layer to read the embedding of the ids unchanged; this "
                         f"model's {type(rnn).__name__} takes {rnn.input_size} features, its nn.Embedding gives "
                         f"{embedding.embedding_dim} (a front end, or features joined to the embedding, in between); "
                         + LIBRARIES_HINT)
    D = 2 if rnn.bidirectional else 1
    if isinstance(model, RNNParts):
        if model.head.in_features != D * rnn.hidden_size:
            raise UsageError(f"the fast engine needs an nn.Linear head on the final hidden state ({D * rnn.hidden_size} "
                             f"features), got {model.head!r}; " + LIBRARIES_HINT)
        if output is not None:
            raise UsageError("output= selects a tuple or dict output of a whole model; RNNParts has one output")
        return rnn, embedding, LinearHead(model.head, model.output, D, dtype)
    return rnn, embedding, RuledHead(model, dtype, output, extra_rules=extra_rules)


class FastDeepShap:
    """DeepLIFT-SHAP values of a model built around an LSTM/GRU, equal to shap.DeepExplainer's on its
    explainable copy (:func:`~.transform.make_explainable`).

    ``output`` selects the explained entry of a tuple or dict output (as for the library explainers).
    ``trim_padding``: for a model that packs its sequences and ignores everything past a
    sequence's length (outputs masked there), run its head over each length only, not over the
    padded length, so that a long padding costs nothing at all; each input's output is checked
    against the model's own, and a model that reads the padding is refused in one line.

    ``chunk_pairs`` bounds how many (input, background) pairs are processed at
    once (memory grows linearly with it, and with layers and directions). ``block_steps``
    time steps run per call of a block function, which ``compile=True`` turns into one
    graph. Works on the model's device; ``dtype`` float64 is for verification.
    Every chunk passes the completeness guard (:func:`~.backends.check_completeness`);
    ``check_completeness=False`` returns the values with their residuals instead. ``extra_rules`` (op name ->
    :class:`~.transform.Rule`) join the transform's rules for the model's head.

    A model whose shape its own recurrence and heads do not take (two recurrent modules, a front
    end, an initial state, a head reading the embedding, ...: a :class:`~torch_imdb.errors.ShapeRefusal`)
    runs its general path, the transform with the recurrence as its fused rule
    (:class:`~.backends.FusedDeepShap`), with the same values; ``general`` is then that engine.
    """

    method = "fast"

    def __init__(self, model, dtype: torch.dtype = torch.float32, chunk_pairs: int = 2048,
                 progress: bool = False, compile: bool = False, block_steps: int = 8,
                 check_completeness: bool = True, output: int | str | None = None, trim_padding: bool = False,
                 extra_rules: dict | None = None) -> None:
        # how it was made, to make it again from the module's new weights (see _follow_the_model)
        self._made_with = {k: v for k, v in locals().items() if k not in ("self", "model", "__class__")}
        self.extra_rules, self.dtype, self.model, self.output = extra_rules, dtype, model, output
        self.own = OwnOutputs(model, dtype, output)  # what the guard checks against: the model as it is
        self._stamp = weights_stamp(self.own.source)
        self.chunk_pairs, self.progress, self.check, self.pair_steps = chunk_pairs, progress, check_completeness, 0
        self.general, self.proven = None, False  # proven: the shortcuts explained a chunk of this model
        self.compiled = compile
        try:
            rnn, embedding, self.head = model_parts(model, dtype, output, compile, extra_rules)
        except ShapeRefusal:
            if isinstance(model, RNNParts):
                raise
            self._take_the_general_path()
            self.trim_padding = False
            return
        self.rnn = rnn
        self.stack = RecurrentStack(rnn, dtype, compile, block_steps)
        self.device = self.stack.device
        self.embedding = None if embedding is None else embedding.weight.detach().to(dtype)
        self._bg_key: torch.Tensor | None = None
        self._bg: dict[int, Trace] = {}
        self._expected: dict[int, float] = {}  # the model's own E f over the background, by target
        # pair_steps: (pair, layer, direction, step) cells the multiplier backward ran, all calls together
        self.trim_padding = trim_padding

    def _follow_the_model(self) -> None:
        """Makes the engine again when the user's module has changed since (its weights trained further, loaded or
        edited): the engine's recurrence, head and cached background hold copies of the weights."""
        if weights_stamp(self.own.source) != self._stamp:
            self.__init__(self.model, **self._made_with)

    def _take_the_general_path(self) -> None:
        """From now on explain with :class:`~.backends.FusedDeepShap` (the same values, for any model the transform
        takes): the shortcuts refused the model's shape."""
        from torch_imdb.explain.backends import FusedDeepShap

        self.general = FusedDeepShap(self.model, self.dtype, chunk_pairs=self.chunk_pairs, output=self.output,
                                     check_completeness=self.check, extra_rules=self.extra_rules,
                                     compile=self.compiled)
        self.head, self._n_outputs, self._tokens = None, None, None

    @classmethod
    def from_parts(cls, rnn: nn.Module, head: nn.Linear, embedding: nn.Embedding | None = None,
                   output: str = "identity", **options) -> "FastDeepShap":
        """The engine for [embedding ->] nn.LSTM/nn.GRU -> Linear(final state) -> output, in closed form."""
        return cls(RNNParts(rnn, head, embedding, output), **options)

    @property
    def n_outputs(self) -> int | None:
        """The model's outputs; for a ruled head or the general path known after its first call (None before)."""
        return self._n_outputs if self.general is not None else self.head.n_outputs

    @property
    def tokens(self) -> bool:
        """Whether the model reads token ids (for the general path: the last inputs were ids)."""
        return self._tokens if self.general is not None else self.embedding is not None

    def check_inputs(self, inputs: torch.Tensor, baselines: torch.Tensor) -> None:
        if self.tokens:
            check_ids(inputs, baselines, self.embedding.shape[0])
        else:
            check_sequences(inputs, baselines)
            if inputs.shape[2] != self.rnn.input_size:
                raise UsageError(f"inputs have {inputs.shape[2]} features but the model takes {self.rnn.input_size}")

    @torch.no_grad()
    def trace(self, inputs: torch.Tensor) -> Trace:
        """Forward pass of inputs (n, T) ids or (n, T, F) floats, keeping what the multipliers need.

        Fewer than TRACE_ROWS rows are padded (with copies of the last) and cut off again, so
        that each row's values are the same whatever the number of rows traced with it.
        """
        n = len(inputs)
        if n < TRACE_ROWS:
            padded = torch.cat([inputs, inputs[-1:].expand(TRACE_ROWS - n, *inputs.shape[1:])])
            return self.trace(padded).rows(slice(0, n))
        x = inputs.to(self.device)
        return self.stack.trace(F.embedding(x, self.embedding) if self.tokens else x.to(self.dtype))

    def _background(self, baselines: torch.Tensor, steps: int | None = None) -> Trace:
        """The background's trace over its first ``steps`` steps (all by default), cached for a few lengths."""
        if self._bg_key is None or self._bg_key.shape != baselines.shape or not torch.equal(self._bg_key, baselines.cpu()):
            self._bg_key, self._bg, self._expected = baselines.cpu().clone(), {}, {}
        steps = baselines.shape[1] if steps is None else steps
        if steps not in self._bg:
            if len(self._bg) >= 4:  # packed inputs of many lengths: keep the full trace and the latest few
                self._bg.pop(next(k for k in self._bg if k != baselines.shape[1]))
            self._bg[steps] = self.trace(baselines[:, :steps])
        return self._bg[steps]

    def iter_attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int = 0,
                       additional_forward_args: tuple = ()) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                              np.ndarray]]:
        """Yield (rows, values (n, T[, F]) float64, outputs (n,), base values (n,)) for chunks of the inputs, rows
        (n,) being the chunk's input numbers (see :meth:`_iter_own`). A shape the shortcuts refuse on the first
        chunk (a recurrent layer called twice, an initial state, a head they would not follow) switches to the
        general path."""
        self._follow_the_model()
        if self.general is None:
            chunks = self._iter_own(inputs, baselines, target, additional_forward_args)
            try:
                first = next(chunks)
            except StopIteration:
                return
            except ShapeRefusal:
                if self.proven:  # the shortcuts took this model before: a refusal now is an error, not a shape
                    raise
                self._take_the_general_path()
            else:
                self.proven = True
                yield first
                yield from chunks
                return
        yield from self._iter_general(inputs, baselines, target, additional_forward_args)

    def _iter_general(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int, extra: tuple):
        """:meth:`iter_attribute` on the general path: :class:`~.backends.FusedDeepShap` chunk by chunk."""
        self._tokens = not inputs.is_floating_point()
        self._n_outputs = self.own.n_outputs(baselines, extra)
        self.general.check = self.check
        per_chunk = self.per_chunk(len(baselines))
        bar = Progress(len(inputs), "DeepSHAP (general path)", "inputs", enabled=self.progress)
        for start in range(0, len(inputs), per_chunk):
            rows = np.arange(start, min(len(inputs), start + per_chunk))
            part = tuple(a[start:start + per_chunk] if isinstance(a, torch.Tensor) else a for a in extra)
            res = self.general.attribute(inputs[start:start + per_chunk], baselines, target, part)
            bar.update(len(rows))
            yield rows, res.values, res.outputs, np.broadcast_to(res.expected_value, len(rows)).copy()
        bar.close()

    def _iter_own(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int = 0,
                  additional_forward_args: tuple = ()) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                         np.ndarray]]:
        """:meth:`iter_attribute` by the engine's own recurrence and head.

        Chunks are consecutive inputs, except for a model that packs its sequences: its inputs
        go in order of length, so that a chunk's inputs share their lengths and run together
        (each over its own steps), not one by one. Memory stays bounded by ``chunk_pairs``
        whatever the number of inputs.
        """
        self.check_inputs(inputs, baselines)
        extra = self._check_extra(additional_forward_args, len(inputs))
        if self.n_outputs is not None and not 0 <= target < self.n_outputs:
            raise UsageError(f"target {target} is not an output of this model (it has {self.n_outputs})")
        self._background(baselines)  # traced once, before the chunks
        per_chunk = self.per_chunk(len(baselines))
        lengths = self._lengths(inputs, extra, per_chunk)
        order = np.arange(len(inputs)) if lengths is None else np.argsort(lengths.numpy(), kind="stable")
        bar = Progress(len(inputs), "fast DeepSHAP", "inputs", enabled=self.progress)
        for start in range(0, len(inputs), per_chunk):
            rows = order[start : start + per_chunk]
            index = torch.from_numpy(rows)
            n = len(rows)
            pad = self.chunk_rows(n, per_chunk) - n
            if pad:  # copies of the chunk's last input
                index = torch.cat([index, index[-1:].expand(pad)])
            take = lambda a: a[index.to(a.device)] if isinstance(a, torch.Tensor) else a  # noqa: E731
            chunk, consts = take(inputs), [take(a) for a in extra]
            values, outputs, expected = self._chunk(chunk, consts, baselines, target,
                                                    None if lengths is None else lengths[index])
            values, outputs, expected = values[:n], outputs[:n], expected[:n]
            first = lambda a: a[:n] if isinstance(a, torch.Tensor) else a  # noqa: E731
            chunk, consts = chunk[:n], [first(a) for a in consts]
            own, own_expected = self._own(chunk, consts, target), self._own_expected(chunk, consts, baselines, target)
            self._check_outputs(rows, (outputs, own, "f(x)"), (expected, own_expected, "E f"),
                                inputs=chunk, extra=consts, baselines=baselines)
            expected = expected if own_expected is None else own_expected
            guard(self.method, values, own, expected, self.dtype, self.check, rows=rows)
            bar.update(n)
            yield rows, values, own, expected
        bar.close()

    def _own(self, inputs: torch.Tensor, extra: list, target: int) -> np.ndarray:
        """The model's own outputs (n,) float64 at ``target``, from the user's module as it is (:class:`OwnOutputs`)."""
        out = self.own(inputs.to(self.device), *extra)
        if not 0 <= target < out.shape[1]:
            raise UsageError(f"target {target} is not an output of this model (it has {out.shape[1]})")
        return out[:, target].double().cpu().numpy()

    def _own_expected(self, inputs: torch.Tensor, extra: list, baselines: torch.Tensor,
                      target: int) -> np.ndarray | None:
        """Each input's E f (n,) by the model itself: the mean of its own outputs over the background, each reference
        run with the input's extra arguments. None where the model itself cannot give it: a token model that computes
        something from its ids besides their embedding (a mask, lengths) has that as a constant of each input, which
        its own forward pass cannot be handed apart from the ids."""
        if self.tokens and self.head.ids_read:
            return None
        if not any(isinstance(a, torch.Tensor) for a in extra):
            return np.full(len(inputs), self._own_mean(baselines, target))
        B = len(baselines)
        return np.array([self._own(baselines, [a[i:i + 1].expand(B, *a.shape[1:]) if isinstance(a, torch.Tensor)
                                               else a for a in extra], target).mean() for i in range(len(inputs))])

    def _own_mean(self, baselines: torch.Tensor, target: int) -> float:
        """The model's own mean output over the background at ``target``, cached with the background."""
        self._background(baselines)  # keys the caches on this background
        if target not in self._expected:
            self._expected[target] = float(self._own(baselines, [], target).mean())
        return self._expected[target]

    def _check_outputs(self, rows: np.ndarray, *pairs: tuple, inputs: torch.Tensor, extra: list,
                       baselines: torch.Tensor) -> None:
        """The engine's f(x) and E f (each pair: (the engine's (n,), the model's own (n,) or None, name)) must be the
        model's own within the guard's tolerance: else the engine explains another function (a mask or lengths
        computed from the input, a path around the recurrent layer), and its values are refused, with the
        transform's one line naming the op and the user's line when it has one."""
        if not self.check:
            return
        for engine, own, name in pairs:
            if own is None:
                continue
            off = off_tolerance(engine, own, self.dtype)
            if not off.any():
                continue
            k = int(np.argmax(off))
            self._transform_refusal(inputs[k:k + 1], baselines[:1],
                                    [a[k:k + 1] if isinstance(a, torch.Tensor) else a for a in extra])
            whose = "output" if name == "f(x)" else "mean output over the background"
            raise OutputMismatch(
                f"{self.method}: {name} of input {rows[k]} as the engine computes it is {engine[k]:.6g}, but the "
                f"model's own {whose} is {own[k]:.6g}: the model computes something from its input that this "
                "engine does not follow; explain it with ShapDeepExplainer or CaptumDeepLiftShap")

    def _transform_refusal(self, x: torch.Tensor, reference: torch.Tensor, extra: list) -> None:
        """Raise the transform's refusal of the model, if it has one, on the pair (x, reference) (1 row each)."""
        if isinstance(self.model, RNNParts):
            return
        twin = explainable_model(self.model, x.shape[1], self.dtype, self.output, self.extra_rules).to(self.device)
        pair = torch.cat([x, reference.to(x.device)]).to(self.device)
        consts = [torch.cat([a, a]).to(self.device) if isinstance(a, torch.Tensor) else a for a in extra]
        try:
            with torch.enable_grad():
                vectors = (twin.embed(pair) if self.tokens else pair.to(self.dtype)).requires_grad_(True)
                twin(vectors, pair if self.tokens else None, *consts)
        except UsageError as exc:
            raise UsageError(f"{self.method}: {exc}") from None

    def per_chunk(self, references: int) -> int:
        """Inputs per chunk against ``references`` background rows: ``chunk_pairs`` pairs at most, one input at least."""
        return max(1, self.chunk_pairs // references)

    def chunk_rows(self, n: int, per_chunk: int) -> int:
        """The rows a chunk of n inputs runs with: n, or compiled, padded to few shapes (:func:`padded_rows`)."""
        return padded_rows(n, per_chunk) if self.compiled else n

    def _lengths(self, inputs: torch.Tensor, extra: tuple, per_chunk: int) -> torch.Tensor | None:
        """The steps (N,) the model's recurrent layer runs for each input when it packs them, else None."""
        if not self.head.reads_inputs:
            return None
        found = []
        for start in range(0, len(inputs), per_chunk):
            rows = slice(start, start + per_chunk)
            chunk = inputs[rows]
            constants = self._constants(chunk, [a[rows] if isinstance(a, torch.Tensor) else a for a in extra])
            found.append(self.head.lengths(constants, len(chunk), chunk.shape[1]))
            if found[-1] is None:
                return None
        return torch.cat(found)

    def _constants(self, chunk: torch.Tensor, consts: list) -> tuple:
        """What a ruled head's forward pass reads besides the explained input: (ids (n, T) or None, *extra)."""
        return (chunk.to(self.device) if self.tokens else None, *consts)

    def _chunk(self, chunk: torch.Tensor, consts: list, baselines: torch.Tensor, target: int,
               lengths: torch.Tensor | None):
        """Values (n, T[, F]), outputs (n,) and base values (n,) of one chunk, as numpy float64.

        A model that packs its sequences runs each input over its own length L (``lengths`` (n,), and its
        references over the same L, as the libraries run them): inputs of one length go together, over L steps.
        """
        T = chunk.shape[1]
        constants = self._constants(chunk, consts)
        groups = [(T, None)] if lengths is None else [(int(L), (lengths == L).nonzero()[:, 0]) for L in lengths.unique()]
        values = np.zeros((len(chunk), *chunk.shape[1:2], *(chunk.shape[2:] if not self.tokens else ())))
        outputs, expected = np.zeros(len(chunk)), np.zeros(len(chunk))
        for L, rows in groups:
            take = (lambda a: a) if rows is None else (
                lambda a: a[rows.to(a.device)] if isinstance(a, torch.Tensor) else a)  # noqa: E731
            sub, consts_g = take(chunk), tuple(take(a) for a in constants)
            rv, bg = self.trace(sub[:, :L]), self._background(baselines, L)
            trim = self.trim_padding and L < T
            if trim:  # the head over L steps: every constant with a time axis cut to L
                consts_g = tuple(a[:, :L] if isinstance(a, torch.Tensor) and a.dim() > 1 and a.shape[1] == T else a
                                 for a in consts_g)
            hm = self.head.multipliers(rv.results.padded(L if trim else T), bg.results.padded(L if trim else T),
                                       target, consts_g)
            if trim:
                self._check_trimmed(hm.f_x, sub, tuple(take(a) for a in consts), target)
            self.pair_steps += len(bg.x) * len(sub) * L * self.stack.L * self.stack.D
            at_rows = slice(None) if rows is None else rows.numpy()
            values[at_rows, :L] = self.stack.pairs(rv, bg, hm, self.tokens).mean(dim=1).double().cpu().numpy()
            outputs[at_rows] = hm.f_x.double().cpu().numpy()
            expected[at_rows] = hm.f_r.double().mean(dim=0).cpu().numpy()
        return values, outputs, expected

    def _check_trimmed(self, trimmed: torch.Tensor, inputs: torch.Tensor, extra: tuple, target: int) -> None:
        """With trim_padding: the outputs of the trimmed head must be the model's own, else it reads the padding."""
        own = self.own(inputs.to(self.device), *extra)[:, target]
        scale = torch.clamp(own.abs(), min=1.0)
        if not bool(((trimmed - own).abs() <= completeness_tolerance(self.dtype) * scale).all()):
            raise UsageError("trim_padding: the model's output changes when the padding past a sequence's length is "
                             "cut, so it reads that padding; explain it without trim_padding")

    def _check_extra(self, extra: tuple, n: int) -> tuple:
        """Further forward arguments, one row per input: only a whole model's forward pass takes them."""
        if extra and not self.head.reads_inputs:
            raise UsageError("additional_forward_args go to a whole model's forward pass; this engine explains "
                             "a model given in parts")
        return check_extra(extra, n, self.device)

    def expected_value(self, baselines: torch.Tensor, target: int = 0) -> float:
        """E f over the background, for a head that reads no constants of the inputs (one base value for all)."""
        self._follow_the_model()
        if self.general is not None or self.head.reads_inputs:
            raise UsageError("this model's base value can depend on each input (masks from its ids): "
                             "read Attribution.expected_value, one per input")
        return self._own_mean(baselines, target)

    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int = 0,
                  additional_forward_args: tuple = ()) -> Attribution:
        """Values (N, T) for token ids (N, T) against (B, T), or (N, T, F) for float sequences, at output ``target``.

        additional_forward_args: further arguments of the model's forward pass, one row per input,
        the same for its references (as the libraries pass them). The expected value is one float
        when the head reads nothing of the inputs, else one per input (N,).
        """
        if several(inputs):  # a tuple of inputs: the transform lays them out as one, on the general path
            if self.general is None:
                self._take_the_general_path()
            result = self.general.attribute(inputs, baselines, target, additional_forward_args)
            self._tokens, self._n_outputs = any(not x.is_floating_point() for x in inputs), self.general.n_outputs
            result.method = self.method
            return result
        t0 = time.perf_counter()
        values = np.zeros(inputs.shape[:2] if self.tokens else inputs.shape)
        outputs, expected = np.zeros(len(inputs)), np.zeros(len(inputs))
        for rows, v, f_x, base in self.iter_attribute(inputs, baselines, target, additional_forward_args):
            values[rows], outputs[rows], expected[rows] = v, f_x, base
        seconds = time.perf_counter() - t0
        if self.general is None and not self.head.reads_inputs:
            expected = self.expected_value(baselines, target)
        elif np.ptp(expected) == 0:
            expected = float(expected[0])
        result = Attribution(self.method, values, outputs, expected, seconds)
        return check_completeness(result, self.dtype, check=False)  # each chunk was checked: record the ratio

    def explain(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int | None = 0,
                words: list[list[str]] | None = None, feature_names: list[str] | None = None,
                output_names: list[str] | None = None, vocab=None, padding: str = "merge"):
        """The attributions as a ``shap.Explanation``, ready for ``shap.plots.text / bar / waterfall / force``.

        Token ids (N, T) with ``vocab`` (a :class:`~torch_imdb.data.Vocab`) or ``words``
        (N lists of T tokens): a text Explanation of the words (see
        :func:`torch_imdb.plots.token_explanation`; ``padding`` "merge", "drop" or
        "keep"), whose text plots show a coloured sentence. Token ids without words:
        values (N, T), data = the ids.
        Float sequences (N, T, F): flattened to (N, T*F) features named ``name@t`` (``feature_names``
        default f0, f1, ...), data = the input values. ``target=None`` explains every output: values
        gain a last axis (K) and base_values are (N, K). values.sum() + base_values = the model output.
        """
        if several(inputs):
            raise UsageError("explain takes one input; for a tuple of inputs, DeepExplainer(model, baselines)(inputs) "
                             "from torch_imdb.explain gives one shap.Explanation per input")
        results = [self.attribute(inputs, baselines, 0 if target is None else target)]  # (a ruled head learns K here)
        targets = range(self.n_outputs) if target is None else [target]
        results += [self.attribute(inputs, baselines, k) for k in targets[1:]]
        return explanation(results, inputs, self.tokens, None if target is None else target, words, feature_names,
                           output_names, vocab, padding)


def explanation(results: list[Attribution], inputs: torch.Tensor, tokens: bool, target: int | None,
                words=None, feature_names=None, output_names=None, vocab=None, padding: str = "merge"):
    """``shap.Explanation`` of attributions of inputs (N, T) ids or (N, T, F) floats: one result, or one per output
    (``target`` None). See :meth:`FastDeepShap.explain`."""
    import shap

    n, T = inputs.shape[:2]
    if tokens and (vocab is not None or words is not None) and target is not None:
        from torch_imdb.plots import token_explanation

        ids = inputs.cpu().numpy()
        words = words if words is not None else [vocab.decode(row) for row in ids]
        return token_explanation(results[0].values, results[0].expected_value, ids, words, padding)
    if tokens:
        data = np.array(words, dtype=object) if words is not None else inputs.cpu().numpy()
        names = [f"t{t}" for t in range(T)]
        values = [r.values for r in results]
    else:
        F_ = inputs.shape[2]
        fnames = feature_names or [f"f{k}" for k in range(F_)]
        if len(fnames) != F_:
            raise UsageError(f"{len(fnames)} feature names for {F_} features")
        names = [f"{fnames[k]}@t{t}" for t in range(T) for k in range(F_)]
        data = inputs.detach().cpu().double().numpy().reshape(n, T * F_)
        values = [r.values.reshape(n, T * F_) for r in results]
    base = [np.broadcast_to(np.asarray(r.expected_value, dtype=np.float64), (n,)) for r in results]
    if target is None:
        values, base = np.stack(values, axis=-1), np.stack(base, axis=-1)
    else:
        values, base = values[0], base[0]
    labels = output_names or [f"output {k}" for k in (range(len(results)) if target is None else [target])]
    return shap.Explanation(values=values, base_values=base, data=data, feature_names=names,
                            output_names=labels if target is None else labels[0])


class FastDeepLiftShap:
    """Captum's calling convention on the fast engine: ``attribute(inputs, baselines, target=None,
    return_convergence_delta=False)``, returning a tensor (N, T) per token for ids or (N, T, F) for
    floats, and with ``return_convergence_delta`` the per-input completeness error (N,)
    (sum of attributions minus (f(x) - E f)), which Captum calls delta.
    """

    def __init__(self, model, **options) -> None:
        self.engine = FastDeepShap(model, **options)

    def attribute(self, inputs: torch.Tensor, baselines: torch.Tensor, target: int | None = None,
                  additional_forward_args: tuple = (), return_convergence_delta: bool = False):
        """Values as a tensor (N, T) for token ids (N, T), or (N, T, F) for float sequences, against
        baselines (B, T[, F]) at output ``target`` (None: the only output); additional_forward_args
        as Captum passes them (one row per input); with ``return_convergence_delta`` also the
        per-input completeness error (N,)."""
        res = self.engine.attribute(inputs, baselines, 0 if target is None else target, additional_forward_args)
        if target is None and self.engine.n_outputs != 1:
            raise UsageError(f"the model has {self.engine.n_outputs} outputs: pass target=")
        values = torch.from_numpy(res.values)
        return (values, torch.from_numpy(res.residual)) if return_convergence_delta else values
