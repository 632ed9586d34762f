"""The DeepLIFT rules: two primitive rules, and the decompositions built from them.

Both libraries explain a batch laid out as ``[inputs; references]`` (two equal
halves along dim 0) and take gradients; a rule replaces an op's gradient by a
multiplier m with ``Δy = m · Δx``, the same for both halves of a pair:

- :func:`elementwise`: the rescale rule for a one-input elementwise op, m = Δy/Δz
  (with shap's fallback to the derivative at the reference where |Δz| < 1e-6);
- :func:`bilinear`: the Shapley rule for two players on a product (or matmul, bmm,
  einsum) of two explained tensors,

      Δ(a·b) = Δa · (b_x + b_r)/2 + Δb · (a_x + a_r)/2,

  exact, and what shap's original TensorFlow backend did for ``Mul``.

Division, softmax, log-softmax, logsumexp, max over a dimension, max pooling,
p-norm normalisation, LayerNorm and multi-head attention are decompositions into
these rules and linear maps, so every one is exact (complete) by construction. The
rules are autograd functions, not module hooks, so shap and Captum (which pass an
unknown op's gradient through) apply them.
"""

from __future__ import annotations

from typing import Callable

import torch

# shap's threshold (deep_pytorch.nonlinear_1d): below it the rescale rule's
# division is unstable and the plain gradient is used instead.
RESCALE_EPS = 1e-6


def _halves(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if t.shape[0] % 2:
        raise RuntimeError("the DeepLIFT rules need a [inputs; references] batch of even size on dim 0")
    half = t.shape[0] // 2
    return t[:half], t[half:]


def _pair_mean(t: torch.Tensor) -> torch.Tensor:
    """(t_x + t_r)/2 for a [inputs; references] batch, repeated onto both halves."""
    t_x, t_r = _halves(t)
    mean = (t_x + t_r) / 2
    return torch.cat([mean, mean], dim=0)


def rescale(dz: torch.Tensor, dy: torch.Tensor, d_ref: torch.Tensor) -> torch.Tensor:
    """DeepLIFT rescale multiplier dy/dz of an elementwise nonlinearity y = fn(z).

    dz = z_x - z_r and dy = fn(z_x) - fn(z_r); where |dz| < RESCALE_EPS it
    returns ``d_ref``, the derivative at the reference point: that is the
    gradient shap's hook passes on for the reference half, whose gradient shap
    multiplies by (x - r). A NaN dz (from -inf - -inf: equal values) counts as small. Never NaN where dy
    and d_ref are finite.
    """
    # four passes over the pair tensor, not six: the division's stray values where dz is small are discarded
    return torch.where(_large(dz), dy / dz, d_ref)


def _large(dz: torch.Tensor) -> torch.Tensor:
    """Where rescale divides: |dz| >= RESCALE_EPS (False for NaN)."""
    return dz.abs() >= RESCALE_EPS


# ---------------------------------------------------------------- the rules of the graph transform
#
# The transform (:mod:`.transform`) gives every op of a user's forward pass one of two rules, or a
# decomposition into them. Both are autograd Functions whose backward pass returns DeepLIFT
# multipliers for a [inputs; references] batch, the same multiplier to both halves, so shap and
# Captum (which pass an unknown op's gradient through) compute exact values through them.


def _finite(m: torch.Tensor) -> torch.Tensor:
    """Multipliers of elements that were infinite in the forward pass (a -inf mask) carry nothing."""
    return torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)


class _Rescale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, fn) -> torch.Tensor:
        y = fn(z)
        ctx.save_for_backward(z, y)
        ctx.fn = fn
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, y = ctx.saved_tensors
        (z_x, z_r), (y_x, y_r) = _halves(z), _halves(y)

        def d_ref() -> torch.Tensor:
            with torch.enable_grad():
                leaf = z_r.detach().requires_grad_()
                return torch.autograd.grad(ctx.fn(leaf).sum(), leaf)[0]

        return _times_per_pair(grad, pair_rescale(z_x, z_r, y_x, y_r, d_ref)), None


def pair_rescale(z_x: torch.Tensor, z_r: torch.Tensor, y_x: torch.Tensor, y_r: torch.Tensor,
                 d_ref: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
    """The rescale multiplier of y = fn(z) for (input, reference) values, as the transform's rule gives it:
    equal values (-inf and -inf of a mask included) differ by 0, and an infinite operand carries nothing.
    d_ref: fn's derivative at z_r, used where |z_x - z_r| < RESCALE_EPS; or a function giving it, called
    only when some difference is that small."""
    # equal infinities give a NaN dz, which rescale counts as small (equal values), and a NaN dy only where the
    # multiplier would be 0 / dz: _finite zeroes it. So no pass to find equal values first.
    dz = z_x - z_r
    if callable(d_ref):
        d_ref = d_ref() if not bool(_large(dz).all()) else dz  # dz: a placeholder, never read
    return _finite(rescale(dz, y_x - y_r, d_ref))


def _times_per_pair(grad: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """grad (2P, ...) times m (P, ...), the same m for both halves, without forming [m; m]. m is never larger
    than grad's half (it is an operand of the op whose output grad is), so the product has grad's shape."""
    return (grad.unflatten(0, (2, -1)) * m).flatten(0, 1)


def elementwise(fn, z: torch.Tensor) -> torch.Tensor:
    """``fn(z)`` for an elementwise ``fn``, whose multiplier is the rescale rule Δy/Δz (exact).

    Where |Δz| < RESCALE_EPS the derivative at the reference is used, as shap does.
    """
    return _Rescale.apply(z, fn)


class _Bilinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, op) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        ctx.op = op
        return op(a, b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        _halves(grad)
        if ctx.op is torch.mul:  # the commonest case, in closed form: d(a*b)/da = b
            (a_x, a_r), (b_x, b_r) = _halves(a), _halves(b)
            return (_times_per_pair(grad, (b_x + b_r) * 0.5).sum_to_size(a.shape),
                    _times_per_pair(grad, (a_x + a_r) * 0.5).sum_to_size(b.shape), None)
        a_m, b_m = _pair_mean(a), _pair_mean(b)
        with torch.enable_grad():
            a_leaf, b_leaf = a.detach().requires_grad_(), b.detach().requires_grad_()
            # op is bilinear: d op(a, b_m)/da depends on b_m alone, and likewise for b
            g_a = torch.autograd.grad(ctx.op(a_leaf, b_m), a_leaf, grad)[0]
            g_b = torch.autograd.grad(ctx.op(a_m, b_leaf), b_leaf, grad)[0]
        return g_a, g_b, None


def bilinear(op, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``op(a, b)`` for a bilinear ``op`` of two explained tensors (a product, matmul, bmm, einsum).

    The two-player Shapley rule: Δop = op(Δa, mean b) + op(mean a, Δb), means over each
    (input, reference) pair. Exact, and the Shapley values of the two operands.
    Both operands must have the batch on dim 0.
    """
    return _Bilinear.apply(a, b, op)


def _shared_max(z: torch.Tensor, dim: int) -> torch.Tensor:
    """A per-pair constant (the larger of the pair's two maxima over ``dim``): softmax's shift.

    Shifting by the same constant within a pair leaves every multiplier unchanged (exp scales
    both halves by one factor that the division takes out); it only keeps exp finite.
    """
    c = z.detach().amax(dim=dim, keepdim=True)
    c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
    if c.shape[0] % 2 == 0 and c.shape[0]:
        c_x, c_r = _halves(c)
        c = torch.maximum(c_x, c_r).repeat(2, *([1] * (c.dim() - 1)))
    return c


def reciprocal(b: torch.Tensor) -> torch.Tensor:
    return elementwise(torch.reciprocal, b)


def divide(a: torch.Tensor, b: torch.Tensor, a_varies: bool = True) -> torch.Tensor:
    """a / b with b explained: a · (1/b), rescale on 1/b and the Shapley rule on the product.

    That is the two-player Shapley rule for division: Δa · mean(1/b) - Δb · mean(a) / (b_x b_r).
    """
    inv = reciprocal(b)
    return bilinear(torch.mul, a, inv) if a_varies else a * inv


def softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    """softmax(z) along ``dim`` decomposed: e = exp(z - c) (rescale), s = sum e (linear), e / s (Shapley)."""
    e = elementwise(torch.exp, z - _shared_max(z, dim))
    return divide(e, e.sum(dim=dim, keepdim=True))


def log_softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    """log_softmax(z) = z - c - log(sum exp(z - c)): rescale on exp and on log, the sum linear."""
    shifted = z - _shared_max(z, dim)
    return shifted - elementwise(torch.log, elementwise(torch.exp, shifted).sum(dim=dim, keepdim=True))


def relu(z: torch.Tensor) -> torch.Tensor:
    return elementwise(torch.relu, z)


def maximum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max(a, b) elementwise as a + relu(b - a) (linear, rescale); -inf entries (masks) are handled."""
    a_inf = torch.isneginf(a)
    return torch.where(a_inf, b, a + relu(b - a))


def amax(z: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """The maximum along ``dim`` as a fold of pairwise maxima, m_k = m_{k-1} + relu(z_k - m_{k-1}),
    in index order: exact, every element credited through the relu it passed."""
    dim = dim % z.dim()
    out = z.select(dim, 0)
    for k in range(1, z.shape[dim]):
        out = maximum(out, z.select(dim, k))
    return out.unsqueeze(dim) if keepdim else out


def layer_norm(x: torch.Tensor, shape, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm decomposed: d = x - mean x (linear), v = mean d² (rescale on the square),
    r = 1/sqrt(v + eps) (rescale), d · r (Shapley), then the affine map (linear)."""
    dims = tuple(range(-len(shape), 0))
    d = x - x.mean(dim=dims, keepdim=True)
    v = elementwise(torch.square, d).mean(dim=dims, keepdim=True)
    y = bilinear(torch.mul, d, elementwise(lambda t: torch.rsqrt(t + eps), v))
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def logsumexp(z: torch.Tensor, dim, keepdim: bool = False) -> torch.Tensor:
    """log(sum exp z) along ``dim`` = c + log(sum exp(z - c)): rescale on exp and on log, the sum linear, c the
    pair's shared shift (a constant within each pair)."""
    c = _shared_max(z, dim)
    out = c + elementwise(torch.log, elementwise(torch.exp, z - c).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze(dim) if isinstance(dim, int) else out.squeeze(tuple(dim))


def normalize(x: torch.Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize``: x / max(||x||_p, eps) along ``dim``: |x|^p (rescale), its sum (linear), the p-th root with
    the floor (rescale), the division (Shapley)."""
    powered = elementwise(lambda t: t.abs().pow(p), x).sum(dim=dim, keepdim=True)
    return divide(x, elementwise(lambda t: t.pow(1.0 / p).clamp_min(eps), powered))


def window_max(x: torch.Tensor, members: list[list[list[int]]]) -> torch.Tensor:
    """The maximum of x (N, C, *S) over windows of its spatial dims S: ``members[d][o]``, the positions along
    spatial dim d that output o along it reads. The windows are gathered (linear) and folded with :func:`amax`, a
    window's positions in index order; a window shorter than the longest repeats its first position at its end,
    which the fold passes at multiplier 0. Returns (N, C, *O)."""
    spatial = x.shape[2:]
    windows = [[]]
    for d, per_output in enumerate(members):  # row-major over the outputs, each window row-major over its positions
        windows = [w + [m] for w in windows for m in per_output]
    flat = []
    for w in windows:
        cells = [[]]
        for positions in w:
            cells = [c + [q] for c in cells for q in positions]
        flat.append([sum(q * int(torch.tensor(spatial[d + 1:]).prod()) for d, q in enumerate(c)) for c in cells])
    width = max(len(f) for f in flat)
    index = torch.tensor([f + [f[0]] * (width - len(f)) for f in flat], device=x.device)  # (O, K)
    gathered = x.flatten(2)[:, :, index]  # (N, C, O, K)
    return amax(gathered, -1).unflatten(2, [len(per_output) for per_output in members])
