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

.PHONY: setup train explain all-test benchmark words report results test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
		|| $(BIN)/pip install --quiet "torch>=2.4" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install --quiet -e ".[test,ray,benchmarks,docs]"
	touch $@

# One torch thread: with the same seed and thread count training is reproducible bit for bit, and this run
# gives the committed weights (fingerprint f481cd03785a2c28), so the results/ files it rewrites stay one model's.
# CHECKPOINT and RESULTS name the folders; the *_ARGS variables add options (the tests use them for a small run).
CHECKPOINT ?= artifacts
RESULTS ?= results
TRAIN_ARGS ?=
EXPLAIN_ARGS ?=
ALL_TEST_ARGS ?=
WORDS_ARGS ?=
train: setup
	@echo "training the seed model with one torch thread (about 11 minutes on 2 cores): the committed weights f481cd03785a2c28"
	OMP_NUM_THREADS=1 $(BIN)/python -m torch_imdb.train --out $(CHECKPOINT) --metrics-out $(RESULTS)/train_metrics.json $(TRAIN_ARGS)

explain: setup
	$(BIN)/python -m torch_imdb.explain --checkpoint $(CHECKPOINT) --engines shap,captum,fast --out $(RESULTS) $(EXPLAIN_ARGS)

all-test: setup
	$(BIN)/python -m torch_imdb.explain --checkpoint $(CHECKPOINT) --all-test --timing-out $(RESULTS)/all_test_timing.json $(ALL_TEST_ARGS)

benchmark: setup
	$(BIN)/python benchmarks/explainer_speed.py

words: setup
	$(BIN)/python -m torch_imdb.words --checkpoint $(CHECKPOINT) --out $(RESULTS) $(WORDS_ARGS)

report: setup
	$(BIN)/python -m torch_imdb.report --results $(RESULTS)

# The chain behind results/ for the seed model: every step reads the checkpoint the first one writes.
results:
	@echo "regenerating the seed model's results: train (~11 min), explain (~1 min), all test reviews (~2 min), words, report"
	$(MAKE) train
	$(MAKE) explain
	$(MAKE) all-test
	$(MAKE) words
	$(MAKE) report

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) artifacts .pytest_cache
