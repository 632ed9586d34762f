"""The cell specs: one per cell, found from the module, agreeing with the command line's choices."""

import pytest
from torch import nn

from torch_imdb.cells import SPECS, layer_weights, spec_named, spec_of
from torch_imdb.config import CELLS


def test_the_command_lines_cells_are_the_specs():
    assert CELLS == tuple(spec.name for spec in SPECS)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_each_module_finds_its_own_spec_and_makes_it(spec):
    module = spec.make(3, 2, num_layers=2, bidirectional=True, batch_first=True)
    assert spec_of(module) is spec and spec_named(spec.name) is spec
    w_ih, w_hh, b_ih, b_hh = layer_weights(module, 1, 1)
    assert w_ih.shape == (spec.gates * 2, 4) and w_hh.shape == (spec.gates * 2, 2) and b_hh.shape == (spec.gates * 2,)


def test_unknown_modules_and_names_are_refused():
    with pytest.raises(TypeError, match="no cell spec for LSTMCell"):
        spec_of(nn.LSTMCell(3, 2))
    with pytest.raises(ValueError, match="unknown cell 'rnn'"):
        spec_named("rnn")
