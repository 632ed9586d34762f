"""The notebooks run top to bottom (on the tests' small checkpoint and planted reviews), and the committed copies
hold a complete run on the real model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the test extra (nbclient, ipykernel)")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the test extra (nbclient, ipykernel)")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("imdb_lstm.ipynb", "your_own_model.ipynb")


def execute(name: str) -> "nbformat.NotebookNode":
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def text_of(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def images_of(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_the_imdb_notebook_runs_and_its_values_add_up(tiny_checkpoint, monkeypatch):
    ck, data = tiny_checkpoint
    monkeypatch.setenv("TORCH_IMDB_CHECKPOINT", str(ck))
    monkeypatch.setenv("TORCH_IMDB_DATA", str(data))
    nb = execute("imdb_lstm.ipynb")
    out = text_of(nb)
    assert "reviews cut to 16 tokens" in out  # it ran on the checkpoint it was given
    assert float(re.search(r"largest gap: (\S+)", out).group(1)) < 1e-4
    assert images_of(nb) == 2  # the force plot and the waterfall
    assert any("text/html" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_the_time_series_notebook_runs_and_finds_the_planted_cells(monkeypatch):
    monkeypatch.setenv("TORCH_IMDB_NOTEBOOK_EPOCHS", "8")
    nb = execute("your_own_model.ipynb")
    out = text_of(nb)
    assert float(re.search(r"largest completeness gap (\S+)", out).group(1)) < 1e-4
    assert float(re.search(r"largest difference from DeepExplainer: (\S+)", out).group(1)) < 1e-6
    assert float(re.search(r"planted cells: (\S+)%", out).group(1)) > 50
    assert images_of(nb) == 1


@pytest.mark.parametrize("name", NAMES)
def test_the_committed_notebook_holds_one_complete_run(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run it top to bottom, then commit"
    assert not [o for c in code for o in c.outputs if o.output_type == "error" or o.get("name") == "stderr"]
    if name == "imdb_lstm.ipynb":  # the real model: 80 tokens, the 20000-word embedding
        assert "reviews cut to 80 tokens" in text_of(nb) and "Embedding(20000, 128)" in text_of(nb)
