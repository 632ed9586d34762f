"""The fast engine's matrix products: oneDNN's float32 product on CPU, torch.mm elsewhere.

On CPU, ``torch.mm`` sends float32 products to MKL, which on AMD processors runs its
AVX2 code: 199-214 GFLOP/s for the engine's shapes on this project's 2 Zen cores,
where oneDNN (shipped inside torch; it picks the instruction set itself) runs the
same products at 387-474. On Intel processors MKL is the faster (451 us against 515
for a (1000, 512) @ (512, 128) product on a 2-core Xeon), but its value for a row
depends on how many rows share the product, and a review's attributions must not
depend on the reviews explained with it; oneDNN's do not. oneDNN has no float64
products and CUDA has its own BLAS: those keep ``torch.mm``, as does a torch whose
oneDNN operator is missing or disagrees with ``torch.mm`` (checked at import).
"""

from __future__ import annotations

import torch


def _onednn_product(a: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, w_t, None, "none", [], "")


# a plain library op, not torch.library.custom_op: its dispatch costs 2.5 us a call where custom_op's
# autograd wrapper costs 17, and the engine calls it once per pair-step (no gradient flows through it)
_LIBRARY = torch.library.Library("torch_imdb", "DEF")
_LIBRARY.define("onednn_product(Tensor a, Tensor w_t) -> Tensor")
_LIBRARY.impl("onednn_product", lambda a, w_t: _onednn_product(a, w_t), "CPU")


@torch.library.register_fake("torch_imdb::onednn_product")
def _(a: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], w_t.shape[0])


def onednn_product(a: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ w_t.T, w_t (N, K): oneDNN's float32 matrix product, opaque to torch.compile (whose own
    lowering of the oneDNN op wants frozen weights)."""
    return torch.ops.torch_imdb.onednn_product(a, w_t)


def _onednn_works() -> bool:
    """Whether this torch has oneDNN's linear op and it agrees with torch.mm (checked once)."""
    try:
        a, w_t = torch.randn(5, 7), torch.randn(3, 7)
        return bool(torch.backends.mkldnn.is_available()
                    and torch.allclose(_onednn_product(a, w_t), a @ w_t.t(), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


ONEDNN = _onednn_works()


def product(a: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:
    """a (..., K) @ w_t.T for a weight given transposed, w_t (N, K) contiguous: (..., N)."""
    flat = a.reshape(-1, a.shape[-1])
    if ONEDNN and flat.dtype == torch.float32 and flat.device.type == "cpu":
        out = onednn_product(flat, w_t)
    else:
        out = flat @ w_t.t()
    return out.view(*a.shape[:-1], w_t.shape[0])
