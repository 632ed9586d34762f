import torch

from torch_imdb.keras_lstm import _MaskedLSTM


def reference(xproj, w_hh, mask):
    """The recurrence written with autograd, as the ground truth for the hand-written backward."""
    B, T, G = xproj.shape
    H = G // 4
    h = xproj.new_zeros(B, H)
    c = xproj.new_zeros(B, H)
    for t in range(T):
        i, f, g, o = (xproj[:, t] + (h * mask) @ w_hh.t()).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    return h


def test_forward_matches_reference():
    torch.manual_seed(0)
    xproj, w, mask = torch.randn(3, 6, 16), torch.randn(16, 4), (torch.rand(3, 4) > 0.3).float() / 0.7
    torch.testing.assert_close(_MaskedLSTM.apply(xproj, w, mask), reference(xproj, w, mask), atol=1e-6, rtol=1e-5)


def test_backward_passes_gradcheck():
    torch.manual_seed(0)
    xproj = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 3) > 0.4).double() / 0.6
    assert torch.autograd.gradcheck(lambda a, b: _MaskedLSTM.apply(a, b, mask), (xproj, w))
