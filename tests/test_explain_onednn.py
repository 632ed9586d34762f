import pytest
import torch

from torch_imdb.explain import onednn
from torch_imdb.explain.onednn import ONEDNN, product


def test_product_matches_torch_mm():
    """The engine's matrix product (oneDNN for float32 on CPU where it works) is torch.mm's, to rounding."""
    torch.manual_seed(0)
    a, w_t = torch.randn(3, 50, 64), torch.randn(16, 64)
    expected = a.double() @ w_t.double().t()
    assert product(a, w_t).shape == (3, 50, 16)
    assert (product(a, w_t).double() - expected).abs().max() < 1e-4
    assert torch.equal(product(a.double(), w_t.double()), a.double() @ w_t.double().t())  # float64: torch.mm


@pytest.mark.skipif(not ONEDNN, reason="this torch build has no working oneDNN linear operator")
def test_float32_products_go_through_onednn(monkeypatch):
    """Where oneDNN works, float32 products use it, inside torch.compile too; without it, torch.mm."""
    calls = []
    real = onednn._onednn_product
    monkeypatch.setattr(onednn, "_onednn_product", lambda a, w_t: calls.append(a.shape) or real(a, w_t))
    a, w_t = torch.randn(4, 8), torch.randn(2, 8)
    product(a, w_t)
    assert calls == [(4, 8)]
    compiled = torch.compile(lambda x: product(x, w_t).sigmoid(), dynamic=False)
    assert torch.allclose(compiled(a), (a @ w_t.t()).sigmoid(), atol=1e-6)
    monkeypatch.setattr(onednn, "ONEDNN", False)
    calls.clear()
    product(a, w_t)
    assert calls == []
