"""The DeepLIFT rules this project needs beyond what shap and Captum ship.

Both libraries explain a batch laid out as ``[inputs; references]`` (two equal
halves along dim 0) and replace each nonlinearity's gradient by a multiplier
m with ``Δy = m · Δx``. They have no rule for the product of two varying
tensors (the LSTM's gates), so :class:`Product` supplies one: the Shapley
rule for two players,

    Δ(a·b) = Δa · (b_x + b_r)/2 + Δb · (a_x + a_r)/2,

which is exact and is what shap's original TensorFlow backend did for ``Mul``.
The same multiplier goes to both halves, as the libraries' own rules do.
"""

from __future__ import annotations

import torch
from torch import nn

# shap's threshold (deep_pytorch.nonlinear_1d): below it the rescale rule's
# division is unstable and the plain gradient is used instead.
RESCALE_EPS = 1e-6


def _pair_mean(t: torch.Tensor) -> torch.Tensor:
    """(t_x + t_r)/2 for a [inputs; references] batch, repeated onto both halves."""
    half = t.shape[0] // 2
    mean = (t[:half] + t[half:]) / 2
    return torch.cat([mean, mean], dim=0)


class _ShapleyProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b = ctx.saved_tensors
        if a.shape[0] % 2:
            raise RuntimeError("the Shapley product rule needs a [inputs; references] batch of even size")
        return grad * _pair_mean(b), grad * _pair_mean(a)


class Product(nn.Module):
    """``a * b`` whose backward pass applies the Shapley rule (the twin exists to be explained).

    With ``shapley = False`` it is a plain product with the ordinary gradient,
    for when the twin should be differentiated like the original module.
    """

    def __init__(self, shapley: bool = True) -> None:
        super().__init__()
        self.shapley = shapley

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _ShapleyProduct.apply(a, b) if self.shapley else a * b


def rescale(dz: torch.Tensor, dy: torch.Tensor, d_ref: torch.Tensor) -> torch.Tensor:
    """DeepLIFT rescale multiplier dy/dz of an elementwise nonlinearity y = fn(z).

    dz = z_x - z_r and dy = fn(z_x) - fn(z_r); where |dz| < RESCALE_EPS it
    returns ``d_ref``, the derivative at the reference point: that is the
    gradient shap's hook passes on for the reference half, whose gradient shap
    multiplies by (x - r). Never NaN.
    """
    small = dz.abs() < RESCALE_EPS
    return torch.where(small, d_ref, dy / torch.where(small, torch.ones_like(dz), dz))
