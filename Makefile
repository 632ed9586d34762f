# Two entry points for a fresh machine: `make train` and `make test`.
# Both create .venv and install the project on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The pinned release installs a CPU build on machines that carry its wheel locally (these do);
# elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU build, or leave it empty.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
# The local IMDB copy beside the checkout, when there is one and nothing else was chosen.
ifeq ($(origin TORCH_IMDB_DATA), undefined)
ifneq ($(wildcard ../shared/data/imdb),)
export TORCH_IMDB_DATA := ../shared/data/imdb
endif
endif

.PHONY: setup train explain benchmark words report test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
		|| $(BIN)/pip install --quiet "torch>=2.4" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $@

train: setup
	$(BIN)/python -m torch_imdb.train --metrics-out results/train_metrics.json

explain: setup
	$(BIN)/python -m torch_imdb.explain

benchmark: setup
	$(BIN)/python benchmarks/explainer_speed.py

words: setup
	$(BIN)/python -m torch_imdb.words

report: setup
	$(BIN)/python -m torch_imdb.report

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) artifacts .pytest_cache
