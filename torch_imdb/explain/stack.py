"""A recurrent module's forward trace and its multiplier backward for every (input, reference) pair: the fast
engine's recurrence, and the transform's fused rule for a recurrent module's call.

:class:`RecurrentStack` holds an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``'s weights per layer and direction; its
:meth:`~RecurrentStack.trace` runs n rows forward once, keeping what the backward needs, and its
:meth:`~RecurrentStack.pairs` walks the multipliers of the head (:class:`HeadMultipliers`) down through the layers
for all pairs at once. :class:`FusedRecurrence` is that pair as an autograd Function, the recurrent module's rule
under the transform (:func:`pair_grid` finds the pairs in an explained batch). The cells' equations and rules
live in :mod:`.cells`.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from torch_imdb.cells import layer_weights, spec_of
from torch_imdb.explain.cells import at, parts_of
from torch_imdb.explain.onednn import product


@dataclass
class RNNResults:
    """What a recurrent layer returns for n rows: outputs (n, T, D*H) of its last layer, and the final
    states h_n and (LSTM) c_n (layers*D, n, H), as ``nn.LSTM`` / ``nn.GRU`` return them (batch first)."""

    outputs: torch.Tensor
    h_n: torch.Tensor
    c_n: torch.Tensor | None = None

    def rows(self, sl: slice) -> "RNNResults":
        """The results of rows ``sl`` (views)."""
        return RNNResults(self.outputs[sl], self.h_n[:, sl], None if self.c_n is None else self.c_n[:, sl])

    def padded(self, T: int) -> "RNNResults":
        """The outputs zero-padded to T steps: what a packed layer's outputs unpack to past a sequence's end."""
        L = self.outputs.shape[1]
        if L == T:
            return self
        pad = self.outputs.new_zeros(self.outputs.shape[0], T - L, self.outputs.shape[2])
        return RNNResults(torch.cat([self.outputs, pad], dim=1), self.h_n, self.c_n)


@dataclass
class HeadMultipliers:
    """The head's part of the explanation of n inputs against B references (pairs backgrounds first).

    outputs: (T, B, n, D*H) multipliers of the last layer's outputs, time-major, or a function of
    (steps, features) slices giving them there (a head that makes them window by window, so that
    no (T, B, n, D*H) tensor is formed), or None when the head reads none; h_n, c_n: (layers*D, B,
    n, H) multipliers of the final states, or None; f_x: (n,) the explained output of each input;
    f_r: (B, n) the output of each reference run with input i's constants (masks from its ids, its
    extra arguments), whose mean over B is input i's base value.
    """

    outputs: torch.Tensor | Callable[[slice, slice], torch.Tensor] | None
    h_n: torch.Tensor | None
    c_n: torch.Tensor | None
    f_x: torch.Tensor
    f_r: torch.Tensor

    def output_multipliers(self, steps: slice, features: slice) -> torch.Tensor | None:
        """The outputs' multipliers (t, B, n, f) at ``steps`` and ``features``, or None when the head reads none."""
        if self.outputs is None:
            return None
        if isinstance(self.outputs, torch.Tensor):
            return self.outputs[steps, ..., features]
        return self.outputs(steps, features)


@dataclass
class Trace:
    """Forward pass of n rows: per layer, per direction, a cell trace; the first layer's input x (n, T, E or F)."""

    layers: list[list]
    x: torch.Tensor

    def rows(self, index: slice) -> "Trace":
        """The trace of some rows (views)."""
        return Trace([[tr.rows(index) for tr in per_dir] for per_dir in self.layers], self.x[index])

    @functools.cached_property
    def results(self) -> RNNResults:
        """What the recurrent module returns: the last layer's outputs and every layer's final states
        (computed once: the background's trace serves every chunk)."""
        top = self.layers[-1]
        outputs = torch.cat([tr.h for tr in top], dim=2) if len(top) > 1 else top[0].h
        T = self.x.shape[1]
        runs = [(tr, bool(d)) for per_dir in self.layers for d, tr in enumerate(per_dir)]
        h_n = torch.stack([tr.h[:, 0 if reverse else T - 1] for tr, reverse in runs])
        cells = [tr.final_cell(reverse) for tr, reverse in runs]
        return RNNResults(outputs, h_n, None if cells[0] is None else torch.stack(cells))


_RECORDING: list[list[tuple[int, int, int]]] = []  # the plans of the open recorded_products() blocks


@contextlib.contextmanager
def recorded_products() -> Iterator[list[tuple[int, int, int]]]:
    """Within the block, every recurrent multiplier backward (the fast engine's own, or the fused rule's on any
    model the transform takes) appends the matrix products (M, K, N) it runs to the list this yields
    (:meth:`RecurrentStack.product_plan`): the products of the benchmark's floor, as a real run has them."""
    plan: list[tuple[int, int, int]] = []
    _RECORDING.append(plan)
    try:
        yield plan
    finally:
        _RECORDING.remove(plan)


def _window_of(g: torch.Tensor, steps: slice, features: slice) -> torch.Tensor:
    """The multipliers of a layer's outputs g (T, B, n, D*H) at some steps and features."""
    return g[steps, ..., features]


def windows(T: int, K: int, reverse: bool) -> list[tuple[int, int]]:
    """Time windows [lo, hi) of at most K steps, in the order a direction's backward pass visits them."""
    if reverse:  # processed t = T-1 .. 0, so its multipliers flow from t = 0 upwards
        return [(lo, min(T, lo + K)) for lo in range(0, T, K)]
    return [(max(0, hi - K), hi) for hi in range(T, 0, -K)]




def padded_rows(n: int, per_chunk: int) -> int:
    """The rows a compiled chunk of n inputs runs with: the smallest of per_chunk, per_chunk/2, per_chunk/4, ...
    (halves rounded up) that holds n.

    torch.compile specialises its kernels on shapes: padding to one of these few sizes bounds
    the recompiles to about log2(per_chunk), wastes under half of a short chunk, and leaves a
    call of exactly per_chunk/2**k inputs (10 reviews against 100 backgrounds) unpadded.
    """
    size = per_chunk
    while size > 1 and (size + 1) // 2 >= n:
        size = (size + 1) // 2
    return size


KEPT_REFERENCES = 2


class RecurrentStack:
    """A recurrent module's layers and directions, as the engine runs them: the forward trace of rows and the
    multiplier backward of (input, reference) pairs.

    rnn: the ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``, or a module with its parameters and ``spec`` (the
    explainable twin); its cell's parts (:func:`~.cells.parts_of`) do the cell's part; its weights are copied in
    ``dtype``.
    ``block_steps`` time steps run per call of the cell's block, which ``compile`` turns into one graph.
    """

    def __init__(self, rnn: nn.Module, dtype: torch.dtype, compile: bool = False, block_steps: int = 8,
                 spec=None) -> None:
        self.spec, self.dtype = spec or spec_of(rnn), dtype
        self.parts = parts_of(self.spec)
        self.L, self.D, self.H = rnn.num_layers, 2 if rnn.bidirectional else 1, rnn.hidden_size
        self.device = rnn.weight_hh_l0.device
        cast = lambda t: None if t is None else t.detach().to(dtype)  # noqa: E731
        self.weights = [[tuple(cast(w) for w in layer_weights(rnn, layer, d)) for d in range(self.D)]
                        for layer in range(self.L)]
        # W_ih.T and W_hh.T, contiguous: the multipliers' products take the weights this way round
        self.weights_t = [[tuple(w.t().contiguous() for w in per_dir[:2]) for per_dir in layer] for layer in self.weights]
        # torch.compile turns a window of block_steps steps into one graph: each step's ~40
        # elementwise passes fuse into one kernel between two matrix products, and no Python
        # runs between steps. The first call compiles (seconds; cached on disk after that).
        if compile:  # one static compile per chunk size (see padded_rows) and model shape; dynamo's default allows 8
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self._block = torch.compile(self.parts.block, dynamic=False) if compile else self.parts.block
        self.compiled = compile
        self.block_steps = block_steps
        self._references: list[Trace] = []  # the last references traced (see reference_trace), newest first

    def fits(self, rnn: nn.Module, compile: bool) -> bool:
        """Whether this stack runs ``rnn`` as it is now: the same dtype, device, compilation and weights (a stack
        kept from an earlier call, with its traces, serves only the same weights)."""
        w = rnn.weight_hh_l0
        if (self.dtype, self.device, self.compiled) != (w.dtype, w.device, compile):
            return False
        return all(torch.equal(kept, now.detach()) for layer, per_dir in enumerate(self.weights)
                   for d, ws in enumerate(per_dir) for kept, now in zip(ws, layer_weights(rnn, layer, d))
                   if kept is not None)

    def reference_trace(self, refs: torch.Tensor) -> Trace:
        """:meth:`trace` of the references, kept: an engine explains chunk after chunk of inputs against the same
        references, so each set is traced once (the last ``KEPT_REFERENCES``, for a module called more than once)."""
        for trace in self._references:
            if trace.x.shape == refs.shape and torch.equal(trace.x, refs):
                return trace
        trace = self.trace(refs.clone())  # a copy: the trace keeps its input, not the caller's whole batch
        self._references = [trace, *self._references[: KEPT_REFERENCES - 1]]
        return trace

    def trace(self, x: torch.Tensor) -> Trace:
        """Every layer and direction over x (n, T, In), the first layer's input."""
        layers, out = [], x
        for layer in range(self.L):
            per_dir = [self.parts.trace(out, *self.weights[layer][d], reverse=bool(d)) for d in range(self.D)]
            layers.append(per_dir)
            out = torch.cat([tr.h for tr in per_dir], dim=2) if self.D > 1 else per_dir[0].h
        return Trace(layers, x)

    def product_plan(self, pairs: int, steps: int, tokens: bool) -> list[tuple[int, int, int]]:
        """The matrix products (M, K, N) that :meth:`pairs` runs for ``pairs`` pairs over ``steps`` steps, one
        entry per product: per layer and direction, h's multipliers (pairs, G*H) @ (G*H, H) at every step but
        the direction's last processed one, and unless the layer's input is token ids (``tokens``, first layer),
        its input's multipliers (K*pairs, G*H) @ (G*H, In), one per window of K steps.

        They are the work no exact engine of this kind avoids: every pair has its own rescale
        multipliers, so each pair-step takes one row of such a product. The head's products
        (a pooled head's, a ruled head's) are not counted.
        """
        plan = []
        for layer in range(self.L):
            for d in range(self.D):
                w_ih_t, w_hh_t = self.weights_t[layer][d]
                plan += [(pairs, w_hh_t.shape[1], w_hh_t.shape[0])] * (steps - 1)
                if not (layer == 0 and tokens):
                    plan += [((hi - lo) * pairs, w_ih_t.shape[1], w_ih_t.shape[0])
                             for lo, hi in windows(steps, self.block_steps, bool(d))]
        return plan

    @torch.no_grad()
    def pairs(self, rv: Trace, bg: Trace, hm: HeadMultipliers, tokens: bool) -> torch.Tensor:
        """Attributions for every pair of n inputs and B backgrounds: (n, B, T) for ids (``tokens``: the first
        layer's input is an embedding, each token's share taken from the input projections), (n, B, T, F) for floats.

        Multipliers flow from the head (``hm``: those of the outputs at every step and of the
        final states) down, layer by layer; within a layer each direction runs backwards through
        its own time order, in windows of ``block_steps`` steps. Buffers are time-major and
        backgrounds first, (T, B, n, .): a window's input multipliers are one matrix product
        into a contiguous block.
        """
        shares, g_in = self._backward(rv, bg, hm, tokens)
        if tokens:
            return shares.permute(2, 1, 0)
        return g_in.permute(2, 1, 0, 3) * (rv.x[:, None] - bg.x[None])  # float inputs: per step and feature

    @torch.no_grad()
    def input_multipliers(self, rv: Trace, bg: Trace, hm: HeadMultipliers, blocks: int = 1) -> torch.Tensor:
        """The multipliers (T, B, n, In) of the first layer's input for every pair (see :meth:`pairs`).

        ``blocks`` k > 1: the pairs are k grids, one per block: ``rv``'s rows are n inputs' k blocks each
        (row i * k + c), ``bg``'s B references' (row b * k + c), block c of an input goes with block c of
        each reference alone, and the head's multipliers and the result are laid out (T, k, B, n, .)."""
        return self._backward(rv, bg, hm, tokens=False, blocks=blocks)[1]

    def _backward(self, rv: Trace, bg: Trace, hm: HeadMultipliers, tokens: bool, blocks: int = 1):
        """(token shares (T, B, n) or 0, the first layer's input multipliers (T, B, n, In) or None for ids); with
        ``blocks`` k > 1 (see :meth:`input_multipliers`), (T, k, B, n, .)."""
        rows, T = rv.x.shape[:2]
        n, B, H = rows // blocks, hm.f_r.shape[0], self.H
        lead = (blocks,) if blocks > 1 else ()
        for plan in _RECORDING:
            plan += self.product_plan(blocks * B * n, T, tokens)
        shares = 0  # for ids: token attributions (T, B, n), summed over the first layer's directions
        # the multipliers of the current layer's outputs at (steps, features), (t, B, n, f): the head's, then the
        # layer above's
        g_above = hm.output_multipliers
        zeros = rv.x.new_zeros(*lead, B, n, H)
        for layer in range(self.L - 1, -1, -1):
            first = layer == 0 and tokens  # the input's share comes from the projections, not a product
            width = rv.x.shape[2] if layer == 0 else self.D * H
            g_in = None if first else torch.empty(T, *lead, B, n, width, dtype=self.dtype, device=self.device)
            for d in range(self.D):
                above = functools.partial(g_above, features=slice(d * H, (d + 1) * H))
                k = layer * self.D + d
                g_h = zeros if hm.h_n is None else hm.h_n[k]
                g_c = zeros if hm.c_n is None else hm.c_n[k]
                share = self._direction(rv.layers[layer][d], bg.layers[layer][d], layer, d, g_h, g_c, above, g_in,
                                        first, blocks)
                if first:
                    shares = shares + share
            g_above = functools.partial(_window_of, g_in)
        return shares, g_in

    def _direction(self, tx, tr, layer: int, d: int, g_h, g_c, above, g_in, tokens: bool, blocks: int = 1):
        """One layer/direction backwards, window by window, from the multipliers g_h, g_c (B, n, H) of its final
        state; adds its input multipliers into g_in (T, B, n, In) unless ``tokens``, and then returns the token
        shares (T, B, n). ``blocks`` k > 1: the layout is (k, B, n, .), each block a grid of its own."""
        w_ih_t, w_hh_t = self.weights_t[layer][d]
        if blocks == 1:
            X = lambda a: a.unsqueeze(-3)  # noqa: E731  (T, n, .) -> (T, 1, n, .): rows broadcast over backgrounds
            R = lambda a: a.unsqueeze(-2)  # noqa: E731  (T, B, .) -> (T, B, 1, .): backgrounds broadcast over rows
        else:  # (T, n * k, .) -> (T, k, 1, n, .) and (T, B * k, .) -> (T, k, B, 1, .): a grid per block
            X = lambda a: a.unflatten(1, (-1, blocks)).transpose(1, 2).contiguous().unsqueeze(-3)  # noqa: E731
            R = lambda a: a.unflatten(1, (-1, blocks)).transpose(1, 2).contiguous().unsqueeze(-2)  # noqa: E731
        rows, refs = type(tx.slab)(*map(X, tx.slab)), type(tr.slab)(*map(R, tr.slab))
        state = g_c if self.spec.cell_state else None  # the cell state's multipliers
        T = tx.h.shape[1]
        shares = torch.empty(T, *g_h.shape[:-1], dtype=self.dtype, device=self.device) if tokens else None
        carry = None
        for lo, hi in windows(T, self.block_steps, reverse=bool(d)):
            window = slice(lo, hi)
            if carry is not None:
                g_h = self.parts.recurrent(carry, w_hh_t)
            carry, state, share, kept = self._block(g_h, state, w_hh_t, at(rows, window), at(refs, window), bool(d),
                                                    above(window), tokens, g_in is not None)
            if tokens:
                shares[window] = share
            if kept is not None:  # the layer input's multipliers, both directions summed
                if d == 0:
                    g_in[window] = product(kept, w_ih_t)
                else:
                    g_in[window] += product(kept, w_ih_t)
        return shares


def pair_grid(x: torch.Tensor, shape: tuple[int, int] | None = None) -> tuple | None:
    """The (input, reference) pairs of an explained batch x (2P, ...) = [inputs; references] as a grid of n distinct
    input rows and B distinct reference rows: (inputs (n, ...), references (B, ...), i (P,), b (P,)), pair p being
    (inputs[i[p]], references[b[p]]); None unless the P pairs are the whole grid, each once (P = n * B), which is
    how the libraries and the engines lay out their batches.

    shape: (B, n) when the caller laid the pairs out backgrounds first (p = b * n + i): then the grid is only
    checked (every input row the same over b, every reference row over i), not searched for; it is searched
    for where that check fails, but a batch of other than B * n pairs (chunks of the caller's rows) is no grid.
    """
    P = x.shape[0] // 2
    if P == 0 or x.shape[0] != 2 * P:
        return None
    with torch.no_grad():  # constants of the rule (and the rule mode lets calls without grad through)
        if shape is not None:
            B, n = shape
            if B * n != P:
                return None
            xs, rs = x[:P].reshape(B, n, -1), x[P:].reshape(B, n, -1)
            if torch.equal(xs, xs[:1].expand_as(xs)) and torch.equal(rs, rs[:, :1].expand_as(rs)):
                i, b = torch.arange(P, device=x.device) % n, torch.arange(P, device=x.device) // n
                return x[:n], x[P::n], i, b
        inputs, i = torch.unique(x[:P].flatten(1), dim=0, return_inverse=True)
        refs, b = torch.unique(x[P:].flatten(1), dim=0, return_inverse=True)
        if len(inputs) * len(refs) != P or len(torch.unique(i * len(refs) + b)) != P:
            return None
        return inputs.view(-1, *x.shape[1:]), refs.view(-1, *x.shape[1:]), i, b


def laid_out(i: torch.Tensor, b: torch.Tensor, B: int) -> bool:
    """Whether the pairs (inputs[i[p]], references[b[p]]) of a grid of B references are laid out backgrounds first,
    pair p = b * n + i, as the engines lay them out: then the backward's (B, n) layout is a view of them."""
    n = len(i) // B if B else 0
    p = torch.arange(len(i), device=i.device)
    return n * B == len(i) and torch.equal(i, p % n) and torch.equal(b, p // n)


def on_pairs(rows: torch.Tensor, refs: torch.Tensor, grid: tuple[torch.Tensor, torch.Tensor] | None = None,
             dim: int = 0) -> torch.Tensor:
    """[rows[i]; refs[b]] along ``dim`` for ``grid`` (i, b) (P,): each pair's input row, then each pair's reference
    row (2P there). ``grid`` None: the n rows and B references laid out backgrounds first (pair p = b * n + i,
    :func:`laid_out`), written as one copy of broadcast views, at about twice a gather's speed."""
    if grid is not None:
        i, b = grid
        return torch.cat([rows.index_select(dim, i), refs.index_select(dim, b)], dim=dim)
    n, B = rows.shape[dim], refs.shape[dim]
    lead, tail = rows.shape[:dim], rows.shape[dim + 1:]
    out = rows.new_empty(*lead, 2 * B * n, *tail)
    halves = out.unflatten(dim, (2, B, n))
    halves.select(dim, 0).copy_(rows.unsqueeze(dim).expand(*lead, B, n, *tail))
    halves.select(dim, 1).copy_(refs.unsqueeze(dim + 1).expand(*lead, B, n, *tail))
    return out


def block_rows(x: torch.Tensor, shape: tuple[int, int] | None) -> tuple | None:
    """The distinct rows of an explained batch x (2P, ...) whose rows are blocks of the caller's (B, n) grid of
    pairs, k > 1 blocks each, block c of pair b * n + i at row (b * n + i) * k + c (a model that cut each review
    into k rows): (inputs (n * k, ...), references (B * k, ...), i (P,), b (P,)), row p being (inputs[i[p]],
    references[b[p]]); None where the rows do not repeat so (only checked, never searched for)."""
    P = x.shape[0] // 2
    if shape is None or x.shape[0] != 2 * P or P == 0 or P % (shape[0] * shape[1]) or P == shape[0] * shape[1]:
        return None
    (B, n), k = shape, P // (shape[0] * shape[1])
    with torch.no_grad():
        xs, rs = x[:P].reshape(B, n * k, -1), x[P:].reshape(B, n, k, -1)
        if not (torch.equal(xs, xs[:1].expand_as(xs)) and torch.equal(rs, rs[:, :1].expand_as(rs))):
            return None
        p = torch.arange(P, device=x.device)
        block, pair = p % k, p // k
        return (x[: n * k], x[P:].unflatten(0, (B, n, k))[:, 0].flatten(0, 1), (pair % n) * k + block,
                (pair // n) * k + block)


def pairs_of(x: torch.Tensor, shape: tuple[int, int] | None = None) -> tuple[tuple, tuple[int, int, int] | None]:
    """The (input, reference) pairs of an explained batch x (2P, ...) = [inputs; references], as (rows, blocks):
    rows = (inputs, references, i (P,), b (P,)), pair p being (inputs[i[p]], references[b[p]]), the distinct
    rows traced once each. ``blocks`` None: the grid of distinct rows (:func:`pair_grid`). Else (B, n, k): the
    rows are k blocks of a (B, n) grid of pairs, pair p at row p (:func:`block_rows`: a model that cut each review
    into k rows); where no such layout holds, the P pairs one by one, pair p being (row p, row P + p), as (1, 1,
    P): what the transform's rules pair, whatever a model did to its rows before."""
    grid = pair_grid(x, shape)
    if grid is not None:
        return grid, None
    found = block_rows(x, shape)
    if found is not None:
        return found, (*shape, len(found[2]) // (shape[0] * shape[1]))
    P = x.shape[0] // 2
    k = torch.arange(P, device=x.device)
    return (x[:P], x[P:], k, k), (1, 1, P)


class FusedRecurrence(torch.autograd.Function):
    """A recurrent module's call on an explained batch, as the transform's rule: the forward pass traces each
    distinct input and reference row once (:meth:`RecurrentStack.trace`), and the backward pass is the engine's
    fused multiplier backward for every pair (:meth:`RecurrentStack.input_multipliers`), fed by the multipliers of
    the outputs at every step and of the final states. Both halves of the batch get their own half's multipliers,
    as the transform's rules give them. x: (2P, T, In) batch first; ``pairs``: :func:`pairs_of`'s (rows,
    blocks); returns (outputs (2P, T, D*H), h_n, c_n (layers*D, 2P, H); c_n is zeros for a cell without a cell
    state)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, stack: RecurrentStack, pairs: tuple):
        (inputs, refs, i, b), blocks = pairs
        with torch._C.DisableTorchFunction():  # plain tensors' work: no rule mode to ask at every op
            rv, bg = stack.trace(inputs.detach()), stack.reference_trace(refs.detach())
        rx, rr = rv.results, bg.results
        ctx.laid_out = blocks is None and laid_out(i, b, len(refs))
        grid = None if ctx.laid_out else (i, b)
        out = on_pairs(rx.outputs, rr.outputs, grid)
        h_n = on_pairs(rx.h_n, rr.h_n, grid, dim=1)
        c_n = on_pairs(rx.c_n, rr.c_n, grid, dim=1) if rx.c_n is not None else torch.zeros_like(h_n)
        ctx.stack, ctx.traces, ctx.cell_state = stack, (rv, bg), rx.c_n is not None
        ctx.grid, ctx.blocks, ctx.shapes = (i, b), blocks, (out.shape, h_n.shape)
        # an output the model does not read (the outputs of a model that reads the final state, a state of one that
        # reads the outputs) gets None, not a tensor of zeros the size of the pairs' outputs
        ctx.set_materialize_grads(False)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, g_out: torch.Tensor | None, g_h: torch.Tensor | None, g_c: torch.Tensor | None):
        (rv, bg), (i, b), P = ctx.traces, ctx.grid, len(ctx.grid[0])
        if not ctx.cell_state:
            g_c = None
        if not ctx.laid_out:  # the scatter and the blocks' views take every multiplier, zeros where none came
            zeros = lambda shape: rv.x.new_zeros(shape)  # noqa: E731
            g_out = zeros(ctx.shapes[0]) if g_out is None else g_out
            g_h = zeros(ctx.shapes[1]) if g_h is None else g_h
            g_c = zeros(ctx.shapes[1]) if g_c is None and ctx.cell_state else g_c

        def on_grid(rows: slice) -> torch.Tensor:
            """The input multipliers (P, T, In) of one half, from that half's output multipliers, pairs placed
            at their (b, i) in the backward's (B, n) layout."""
            n, B = rv.x.shape[0], bg.x.shape[0]
            if ctx.laid_out:  # pair p = b * n + i already: the layout is a view, no scatter and no gather
                state = lambda g: None if g is None else g[:, rows].unflatten(1, (B, n))  # noqa: E731
                hm = HeadMultipliers(None if g_out is None else g_out[rows].unflatten(0, (B, n)).permute(2, 0, 1, 3),
                                     state(g_h), state(g_c), rv.x.new_zeros(n), rv.x.new_zeros(B, n))
                m = ctx.stack.input_multipliers(rv, bg, hm)  # (T, B, n, In)
                return m.permute(1, 2, 0, 3).reshape(P, m.shape[0], m.shape[-1])
            outputs = g_out.new_zeros(g_out.shape[1], B, n, g_out.shape[2])
            outputs[:, b, i] = g_out[rows].transpose(0, 1)
            h_n = g_h.new_zeros(g_h.shape[0], B, n, g_h.shape[2])
            h_n[:, b, i] = g_h[:, rows]
            c_n = None
            if ctx.cell_state:
                c_n = g_c.new_zeros(g_c.shape[0], B, n, g_c.shape[2])
                c_n[:, b, i] = g_c[:, rows]
            hm = HeadMultipliers(outputs, h_n, c_n, g_out.new_zeros(n), g_out.new_zeros(B, n))
            return ctx.stack.input_multipliers(rv, bg, hm)[:, b, i].transpose(0, 1)

        def in_blocks(rows: slice) -> torch.Tensor:
            """The same for pairs in blocks: row p = (b * n + i) * k + c sits at (c, b, i) of the (k, B, n) layout
            (views, no scatter)."""
            B, n, k = ctx.blocks
            outputs = g_out[rows].unflatten(0, (B, n, k)).permute(3, 2, 0, 1, 4)  # (T, k, B, n, F)
            states = lambda g: g[:, rows].unflatten(1, (B, n, k)).permute(0, 3, 1, 2, 4)  # noqa: E731 (L, k, B, n, H)
            hm = HeadMultipliers(outputs, states(g_h), states(g_c) if ctx.cell_state else None, g_out.new_zeros(n),
                                 g_out.new_zeros(B, n))
            m = ctx.stack.input_multipliers(rv, bg, hm, blocks=k)  # (T, k, B, n, In)
            return m.permute(2, 3, 1, 0, 4).reshape(P, m.shape[0], m.shape[-1])

        multipliers = on_grid if ctx.blocks is None else in_blocks
        first, second = slice(0, P), slice(P, 2 * P)
        m_x = multipliers(first)
        same = all(g is None or torch.equal(g.narrow(dim, 0, P), g.narrow(dim, P, P))
                   for g, dim in ((g_out, 0), (g_h, 1), (g_c, 1)))
        m_r = m_x if same else multipliers(second)
        return torch.cat([m_x, m_r]), None, None
