"""Interventional Shapley values by sampling, with a standard error per token: the ``shapley`` engine.

The game is the one DeepSHAP approximates and the faithfulness benchmark's
reference plays: a coalition S of positions keeps the input's tokens there and
takes a background row's elsewhere,

    v(S) = E_b f(x_S, b_{not S}),

with f the user's own module (run untouched, as :class:`~.own.OwnOutputs`) at the
explained output. The players are the positions where the input differs from some
background row; the others are null players, worth exactly 0. Since the Shapley
value is linear in the game, phi(v) is the mean over the background rows of
phi(v_b), v_b(S) = f(x_S, b_{not S}).

The estimator, chosen by measurement (docs/design.md):

- **antithetic permutations, one background row each.** A permutation and its
  reverse, run against one row b, give every player's marginal contribution to
  v_b twice for 2(d - 1) forward rows; the rows b take their turns, so that each
  has as many permutations as the others (a stratified sample over the background,
  which leaves no variance between the rows: an additive control variate, such as
  DeepLIFT's values per row, could remove nothing more);
- **enumeration when it is cheaper.** When every coalition with every row costs no
  more than the budget (2^d B rows, d <= 16), the values are computed exactly from all of them.

A chain's rows share the recurrent steps of their common prefixes: each one-direction
recurrent module runs each distinct prefix's segment once (:mod:`.prefixes`), where its
inputs show the prefixes are shared, and whole elsewhere; the values are the same.

Each player's standard error comes from the pooled within-row variance of the
samples. The samples alternate between two halves, whose estimates give a
split-half reliability (Spearman-Brown corrected). Sampling stops at a target
standard error or reliability, or at a budget of forward rows. Values always add
up to f(x) - E f(background), and the guard checks that against the model itself.
"""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch
from torch import nn

from torch_imdb.errors import UsageError
from torch_imdb.explain.api import Attribution, check_completeness, check_extra, check_ids, check_sequences
from torch_imdb.explain.inputs import check_several, several
from torch_imdb.explain.own import OwnOutputs
from torch_imdb.explain.prefixes import SEGMENT, PrefixPlan, chain_plan, shared_prefixes
from torch_imdb.faithfulness import spearman, spearman_brown

ENUMERATE_PLAYERS = 16  # the most players whose 2^d coalitions are enumerated
BATCH_ROWS = 128  # rows per forward pass: 1.3-2.4x the rows a second of 8,192 for each of the project's architectures
CHAINS = 4  # permutation chains per forward pass when they share prefixes: faster than 2, 8 or 16


def exact_shapley(v: np.ndarray, d: int) -> np.ndarray:
    """The Shapley values (d,) of a game given on every coalition: v (2^d,), coalition m holding player i where
    bit i of m is set."""
    masks = np.arange(1 << d)
    size = np.array([bin(m).count("1") for m in masks])
    weight = np.array([math.factorial(s) * math.factorial(d - s - 1) / math.factorial(d) if s < d else 0.0
                       for s in range(d + 1)])
    phi = np.zeros(d)
    for i in range(d):
        without = masks[(masks >> i) & 1 == 0]
        phi[i] = (weight[size[without]] * (v[without | (1 << i)] - v[without])).sum()
    return phi


def permutations(d: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """m random orders (m, d) of d players."""
    return rng.random((m, d)).argsort(axis=1)


def marginal_gains(chain: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Each player's marginal contribution (m, d) along chains (m, d + 1) of the orders (m, d)."""
    gains = np.empty(orders.shape)
    np.put_along_axis(gains, orders, np.diff(chain, axis=1), axis=1)
    return gains


class ShapleySampling:
    """Interventional Shapley values of a model's output over a background, sampled to a target.

    Args:
        model: the user's ``nn.Module`` (a :class:`~torch_imdb.model.ReviewClassifier` is explained as
            P(positive)); it is run as it is, in ``dtype``.
        dtype: the dtype the model runs in.
        output: the entry of a tuple or dict output.
        target_se: stop when every player's standard error is at most this (None: no such target).
        target_reliability: stop when the split-half reliability reaches this (None: no such target).
        max_evaluations: the most forward rows per input: the budget. Where every coalition with every background
            row fits it (and d <= 16 players), the values are computed from all of them, exactly.
        seed: seeds the coalitions; input k uses seed + k.
        batch_rows: rows per forward pass. It changes the time, not the values: small batches keep their
            activations (an LSTM's input gates for every step, rows x T x 4H) in cache (docs/design.md).
        prefix_segment: the rows of a permutation chain share the recurrent steps of their common prefixes, computed
            once per segment of this many steps (:mod:`.prefixes`); None runs every row whole. It changes the time,
            not the values.

    ``attribute`` returns an :class:`~.backends.Attribution` whose ``extra`` holds
    ``standard_error`` (N, *shape), ``halves`` (2, N, *shape) (the estimates of the two halves of the samples),
    ``reliability`` (N,), ``evaluations`` (N,) forward rows and ``exact`` (N,) bool: every coalition enumerated.
    The targets are checked after each round: one antithetic pair of permutations per background row.
    """

    method = "shapley"

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, output: int | str | None = None,
                 target_se: float | None = None, target_reliability: float | None = 0.98,
                 max_evaluations: int = 200_000,
                 seed: int = 0, batch_rows: int = BATCH_ROWS, prefix_segment: int | None = SEGMENT) -> None:
        if target_se is None and target_reliability is None:
            warnings.warn("no target: the shapley engine samples until max_evaluations")
        self.model, self.dtype, self.output = model, dtype, output
        self.own = OwnOutputs(model, dtype, output)
        self.target_se, self.target_reliability = target_se, target_reliability
        self.max_evaluations = max_evaluations
        self.seed, self.batch_rows, self.prefix_segment = seed, batch_rows, prefix_segment

    def _f(self, rows: list[torch.Tensor], target: int, extra: tuple, plan: PrefixPlan | None = None) -> np.ndarray:
        """f (m,) float64 of rows, one (m, *shape) tensor per input, the user's module at ``target``: by ``plan`` in
        one pass, else in batches of ``batch_rows``."""
        m = len(rows[0])
        out = np.empty(m)
        size = m if plan is not None else self.batch_rows
        for s in range(0, m, size):
            part = tuple(r[s : s + size] for r in rows)
            more = tuple(a.expand(len(part[0]), *a.shape[1:]) if isinstance(a, torch.Tensor) else a for a in extra)
            with shared_prefixes(self.own.current(), plan):  # the copy the call below runs
                f = self.own(part if len(part) > 1 else part[0], *more)
            out[s : s + size] = f[:, target].double().cpu().numpy()
        return out

    def attribute(self, inputs: torch.Tensor | tuple, baselines: torch.Tensor | tuple, target: int = 0,
                  additional_forward_args: tuple = ()) -> Attribution:
        """Shapley values of each input against ``baselines`` at output ``target``.

        Args:
            inputs: token ids (N, T) or float sequences (N, T, F); or a tuple of inputs (N, ...) that the model's
                forward takes first, each token ids or floats, whose entries are all players of one game.
            baselines: the background, (B, T) or (B, T, F); for a tuple of inputs a tuple of (B, ...), one each.
            target: the output column explained.
            additional_forward_args: further forward arguments, one row per input.

        Returns:
            An :class:`~.backends.Attribution`: values (N, T) or (N, T, F) (a tuple of (N, ...) for a tuple of
            inputs, and so ``standard_error`` and ``halves``), f(x) (N,), E f (N,).
        """
        vocab = [m.num_embeddings for m in self.own.current().modules() if isinstance(m, nn.Embedding)]
        if several(inputs):
            check_several(inputs, baselines)
            xs, bgs = list(inputs), list(baselines)
            for k, t in enumerate([*xs, *bgs]):
                if not t.is_floating_point() and vocab and int(t.max()) >= max(vocab):
                    raise UsageError(f"input {k % len(xs)} or its baselines hold ids past the model's vocabulary "
                                     f"({max(vocab)}); were they encoded with this model's vocabulary?")
        else:
            if not isinstance(inputs, torch.Tensor) or not isinstance(baselines, torch.Tensor) or inputs.dim() < 2:
                raise UsageError("inputs and baselines must be tensors: (n, T) token ids or (n, T, F) sequences, "
                                 "or tuples of tensors for a model of several inputs")
            if inputs.is_floating_point():
                check_sequences(inputs, baselines)
            else:
                check_ids(inputs, baselines, vocab[0] if vocab else int(inputs.max()) + 1)
            xs, bgs = [inputs], [baselines]
        n = len(xs[0])
        extra = check_extra(additional_forward_args, n, bgs[0].device)
        t0 = time.perf_counter()
        shapes = [tuple(x.shape[1:]) for x in xs]
        size = sum(math.prod(shape) for shape in shapes)
        values, se, halves = np.zeros((n, size)), np.zeros((n, size)), np.zeros((2, n, size))
        outputs, expected = np.zeros(n), np.zeros(n)
        reliability, evaluations, exact = np.full(n, np.nan), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        for k in range(n):
            more = tuple(a[k : k + 1] if isinstance(a, torch.Tensor) else a for a in extra)
            r = self._one([x[k] for x in xs], bgs, target, more, np.random.default_rng(self.seed + k))
            values[k], se[k], halves[:, k], outputs[k], expected[k] = r["values"], r["se"], r["halves"], r["f_x"], r["base"]
            reliability[k], evaluations[k], exact[k] = r["reliability"], r["evaluations"], r["exact"]

        def per_input(flat: np.ndarray, lead: int = 1):
            """flat (*lead dims, size) as each input's shape, a tuple for a tuple of inputs."""
            cut = np.split(flat, np.cumsum([math.prod(s) for s in shapes])[:-1], axis=-1)
            parts = tuple(c.reshape(*flat.shape[:lead], *s) for c, s in zip(cut, shapes))
            return parts if several(inputs) else parts[0]

        result = Attribution(self.method, per_input(values), outputs, expected, time.perf_counter() - t0,
                             extra={"standard_error": per_input(se), "halves": per_input(halves, 2),
                                    "reliability": reliability, "evaluations": evaluations, "exact": exact,
                                    "seed": self.seed})
        return check_completeness(result, self.dtype)

    def _one(self, xs: list[torch.Tensor], bgs: list[torch.Tensor], target: int, extra: tuple,
             rng: np.random.Generator) -> dict:
        """Everything :meth:`attribute` reports for one input: xs, one tensor per input of the model (its shape),
        against backgrounds bgs (B, its shape); values flattened and side by side."""
        xs = [x if not x.is_floating_point() else x.to(self.dtype) for x in xs]
        bgs = [bg if not bg.is_floating_point() else bg.to(self.dtype) for bg in bgs]
        B = len(bgs[0])
        flat_x, flat_bg = [x.reshape(-1) for x in xs], [bg.reshape(B, -1) for bg in bgs]
        sizes = [len(f) for f in flat_x]
        differs = np.concatenate([(fb != fx).any(dim=0).cpu().numpy() for fx, fb in zip(flat_x, flat_bg)])
        players = np.flatnonzero(differs)
        offsets = np.cumsum([0, *sizes])
        own = [players[(players >= a) & (players < b)] - a for a, b in zip(offsets[:-1], offsets[1:])]
        columns = [np.flatnonzero((players >= a) & (players < b)) for a, b in zip(offsets[:-1], offsets[1:])]
        d, size = len(players), int(offsets[-1])
        ends = self._f([torch.cat([x[None], bg]) for x, bg in zip(xs, bgs)], target, extra)
        f_x, f_b = float(ends[0]), ends[1:]
        evaluations = 1 + B
        phi, halves, se = np.zeros(size), np.zeros((2, size)), np.zeros(size)

        def report(reliability: float, exact: bool) -> dict:
            return dict(values=phi, se=se, halves=halves, f_x=f_x, base=float(f_b.mean()), reliability=reliability,
                        evaluations=evaluations, exact=exact)

        sharing = True  # until a plan finds no recurrent module to follow it

        def run(keep: torch.Tensor, rows_of: np.ndarray, orders: np.ndarray | None = None) -> np.ndarray:
            """f (m,) of the input's entries where ``keep`` (m, d) and background row ``rows_of`` (m,) elsewhere;
            ``orders`` (m / (d - 1), d): the rows are these orders' chains, which share their prefixes."""
            nonlocal evaluations, sharing
            rows = []
            for x, fx, fb, mine, cols in zip(xs, flat_x, flat_bg, own, columns):
                r = fb[torch.from_numpy(rows_of)].clone()
                r[:, mine] = torch.where(keep[:, cols].to(r.device), fx[mine], r[:, mine])
                rows.append(r.view(len(r), *x.shape))
            evaluations += len(rows_of)
            if orders is None or self.prefix_segment is None or len(xs) > 1:
                return self._f(rows, target, extra)
            steps = xs[0].shape[0]
            times = players // (size // steps)  # each player's step
            out = []
            for c in range(0, len(orders), CHAINS):
                if not sharing:  # the rest whole, in batches of batch_rows
                    out.append(self._f([r[c * (d - 1):] for r in rows], target, extra))
                    break
                plan = chain_plan(orders[c : c + CHAINS], times, steps, self.prefix_segment)
                cut = slice(c * (d - 1), c * (d - 1) + plan.rows)
                out.append(self._f([r[cut] for r in rows], target, extra, plan))
                sharing = plan.shared > 0  # a plan no recurrent module could follow is not made again
            return np.concatenate(out)

        if d <= 1:  # one player takes it all
            phi[players] = halves[:, players] = f_x - f_b.mean()
            return report(np.nan, True)
        if d <= ENUMERATE_PLAYERS and (B << d) <= self.max_evaluations:  # every coalition: exact
            masks = np.arange(1 << d)
            keep = torch.from_numpy((masks[:, None] >> np.arange(d)) & 1 == 1)
            v = run(keep.repeat_interleave(B, dim=0), np.tile(np.arange(B), 1 << d)).reshape(-1, B).mean(axis=1)
            phi[players] = halves[:, players] = exact_shapley(v, d)
            return report(1.0, True)
        total, squares = np.zeros((2, B, d)), np.zeros((2, B, d))  # per half and row: sums of samples
        count = np.zeros((2, B))
        step = np.tril(np.ones((d - 1, d), dtype=bool))  # chain m keeps the first m + 1 players of an order
        reliability, done, rounds = np.nan, False, 0
        while not done:
            # one antithetic pair of permutations per background row, in one batch of forward passes
            orders = permutations(d, B, rng)
            both = np.concatenate([orders, orders[:, ::-1]])  # (2B, d)
            keep = np.zeros((2 * B, d - 1, d), dtype=bool)
            np.put_along_axis(keep, np.broadcast_to(both[:, None, :], keep.shape), step[None], axis=2)
            rows_of = np.tile(np.arange(B), 2)
            f = run(torch.from_numpy(keep.reshape(-1, d)), np.repeat(rows_of, d - 1), both).reshape(2 * B, d - 1)
            chain = np.concatenate([f_b[rows_of, None], f, np.full((2 * B, 1), f_x)], axis=1)  # (2B, d + 1)
            gains = marginal_gains(chain, both)
            sample = (gains[:B] + gains[B:]) / 2  # (B, d): row b's antithetic pair
            half = rounds % 2
            total[half] += sample
            squares[half] += sample ** 2
            count[half] += 1
            rounds += 1
            if rounds < 2:
                continue
            n = count.sum(axis=0)  # (B,)
            means = total.sum(axis=0) / n[:, None]  # (B, d)
            est = [means.mean(axis=0)] + [(total[h] / count[h][:, None]).mean(axis=0) for h in (0, 1)]
            pooled = (squares.sum(axis=0) - n[:, None] * means ** 2).sum(axis=0) / max(n.sum() - B, 1)
            var = np.maximum(pooled, 0.0) * (1.0 / n).sum() / B ** 2
            if est[1].std() > 0 and est[2].std() > 0:
                reliability = spearman_brown(spearman(est[1], est[2]))
            done = ((self.target_se is not None and rounds > 2 and float(np.sqrt(var.max())) <= self.target_se)
                    or (self.target_reliability is not None and reliability >= self.target_reliability)
                    or evaluations >= self.max_evaluations)
        phi[players], halves[0, players], halves[1, players] = est
        se[players] = np.sqrt(var)
        return report(reliability, False)
