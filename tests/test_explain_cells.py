"""The fast engine's part of each cell: one entry per spec, its trace equal to the module itself."""

import pytest
import torch

from torch_imdb.cells import SPECS, layer_weights
from torch_imdb.explain.cells import PARTS, parts_of


def test_every_cell_has_its_engine_parts():
    assert set(PARTS) == {spec.name for spec in SPECS}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_trace_equals_the_module(spec):
    torch.manual_seed(0)
    module = spec.make(3, 4, batch_first=True, bidirectional=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    with torch.no_grad():  # as the fast engine runs it
        out, _ = module(x)
        traces = [parts_of(spec).trace(x, *layer_weights(module, 0, d), reverse=bool(d)) for d in range(2)]
    for d, trace in enumerate(traces):
        torch.testing.assert_close(trace.h, out[..., d * 4 : (d + 1) * 4], atol=1e-12, rtol=0)
