"""Coalition rows that share a prefix share its recurrent steps: the shapley engine's recurrent modules, segment by
segment.

Along one permutation chain each row keeps one more player than the row before, so two rows of a chain agree on
every step before the first player that one keeps and the other does not. A :class:`PrefixPlan` lists, for each
segment of ``segment`` steps, the distinct prefixes (nodes) of a batch of rows up to the segment's end: the row each
node is computed from and the node it continues. Under :func:`shared_prefixes`, each recurrent module of a model
(``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``, one direction, no initial state, a tensor input) runs each node's segment once,
from its parent's final state, by the module's own forward, and hands every row its node's outputs.

The plan is a claim about the model's inputs, not about its recurrent module's, so each call checks it there: where
two rows of one node differ anywhere in the node's steps (a front end that mixes steps, a module run on other rows
than the model's) or the call is not of that kind, the module runs whole. The outputs are the module's either way.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn

from torch_imdb.cells import RECURRENT_MODULES

SEGMENT = 16  # steps per segment: 60% of the seed model's row-steps (8: 55%) in fewer calls, the fastest of 4-20


@dataclass
class PrefixPlan:
    """The shared prefixes of ``rows`` rows over ``steps`` steps.

    levels: per segment [lo, hi), in time order, (lo, hi, first (nodes,) the row each node is computed from,
    node (rows,) each row's node, parent (nodes,) each node's node in the segment before, None for the first).
    A node's rows are consecutive, ``first`` the first of them; ``agree`` (rows,): the step up to which each row
    shares the previous row's node (0: none), so the plan holds where each row's inputs equal the previous row's
    before that step. ``shared`` counts the module calls that ran by the plan.
    """

    rows: int
    steps: int
    levels: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray | None]]
    agree: np.ndarray
    shared: int = 0

    @property
    def fraction(self) -> float:
        """The share of the rows' steps that the plan computes."""
        return sum(len(first) * (hi - lo) for lo, hi, first, _, _ in self.levels) / (self.rows * self.steps)


def chain_plan(orders: np.ndarray, times: np.ndarray, steps: int, segment: int = SEGMENT) -> PrefixPlan:
    """The plan of permutation chains: row k of chain c (rows c * (d - 1) + k, k < d - 1) keeps the first k + 1
    players of ``orders[c]`` (m, d); ``times`` (d,) the step of each player.

    Two rows of a chain share their prefix up to step hi where they keep as many of the players before hi.
    """
    m, d = orders.shape
    before = times[orders]  # (m, d) the step of each order's players, in order
    levels, previous = [], None
    agree = np.zeros(m * (d - 1), dtype=np.int64)
    for lo in range(0, steps, segment):
        hi = min(steps, lo + segment)
        kept = np.cumsum(before < hi, axis=1)[:, : d - 1]  # (m, d - 1): players before hi each row keeps
        key = (np.arange(m)[:, None] * (d + 1) + kept).ravel()
        _, first, node = np.unique(key, return_index=True, return_inverse=True)
        node = node.ravel()
        parent = None if previous is None else previous[first]
        if parent is not None and not np.array_equal(previous, parent[node]):
            raise AssertionError("a node's rows continue different prefixes")  # a plan that breaks its own claim
        levels.append((lo, hi, first, node, parent))
        agree[1:][node[1:] == node[:-1]] = hi  # a node's rows are consecutive: a chain's rows in order
        previous = node
    return PrefixPlan(m * (d - 1), steps, levels, agree)


def _by_plan(module: nn.Module, plan: PrefixPlan, input, hx=None):
    """``module``'s forward on ``input`` by the plan, where the input agrees with it; else its plain forward."""
    whole = type(module).forward
    if hx is not None or not isinstance(input, torch.Tensor) or input.dim() != 3 or module.bidirectional:
        return whole(module, input, hx)
    x = input if module.batch_first else input.transpose(0, 1)
    if x.shape[:2] != (plan.rows, plan.steps):
        return whole(module, input, hx)
    # the rows of one node must agree on its steps: each row with the row before it, up to where they share a node
    before = torch.arange(plan.steps, device=x.device) < torch.from_numpy(plan.agree[1:]).to(x.device)[:, None]
    if not bool(((x[1:] == x[:-1]).all(dim=2) | ~before).all()):
        return whole(module, input, hx)
    on = lambda a: torch.from_numpy(a).to(x.device)  # noqa: E731
    outputs, state = None, None
    for lo, hi, first, node, parent in plan.levels:
        first, node = on(first), on(node)
        part = x[first, lo:hi]
        start = None if state is None else tuple(s[:, on(parent)] for s in state)
        out, last = whole(module, part if module.batch_first else part.transpose(0, 1),
                          None if start is None else (start if isinstance(module, nn.LSTM) else start[0]))
        out = out if module.batch_first else out.transpose(0, 1)
        if outputs is None:
            outputs = out.new_empty(plan.rows, plan.steps, out.shape[2])
        outputs[:, lo:hi] = out[node]
        state = last if isinstance(last, tuple) else (last,)
    final = tuple(s[:, node] for s in state)
    plan.shared += 1
    return (outputs if module.batch_first else outputs.transpose(0, 1).contiguous(),
            final if isinstance(module, nn.LSTM) else final[0])


@contextmanager
def shared_prefixes(model: nn.Module, plan: PrefixPlan | None) -> Iterator[None]:
    """Run ``model``'s recurrent modules by ``plan`` (no plan: as they are) within the block."""
    # a module whose instance has a forward of its own runs that one, as it is
    modules = [] if plan is None else [m for m in model.modules()
                                       if isinstance(m, RECURRENT_MODULES) and "forward" not in m.__dict__]
    for m in modules:
        m.forward = functools.partial(_by_plan, m, plan)
    try:
        yield
    finally:
        for m in modules:
            del m.forward
