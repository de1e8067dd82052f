# The one obvious way in: `make dev` runs tokenbridge, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: install dev test test-fast lint format bench bench-cluster soak chaos clean

HOST   ?= 127.0.0.1

.PHONY: install install-run requirements

# `install`: what running and testing need (dev extras); `install-run`: only what running needs (`make dev`).
install: $(VENV)/.installed
install-run: $(VENV)/.installed-run

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tokenbridge needs Python 3.11 or newer (set PYTHON=...)")'
	@echo "Creating the virtualenv $(VENV) ..."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	@echo "Installing tokenbridge and what it needs to run into $(VENV) (the first time takes about 30 s) ..."
	@$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	@echo "Installing tokenbridge with its test and lint tools into $(VENV) (the first time takes a minute or two) ..."
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed-run

dev: install-run
	$(BIN)/tokenbridge dev --port $(PORT) --host $(HOST)

# requirements.txt for Python buildpacks, pinned from this environment (tests fail when it is out of step).
requirements: install
	$(BIN)/python scripts/requirements.py

test: install
	$(BIN)/python -m pytest --durations=20 $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not e2e" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

bench-cluster: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.cluster

# The whole stack at steady load for an hour (SOAK_MINUTES): the memory of every process, minute by minute.
soak: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.soak

# Mixed load on two of every process while faults are injected at random; checks every generation (bench/chaos).
# CHAOS_DURATION_S, CHAOS_CONCURRENCY, CHAOS_FAULT_INTERVAL_S, CHAOS_SEED, ...: python -m bench.chaos --help
chaos: install
	$(BIN)/python -m bench.chaos

clean:
	rm -rf $(VENV) .tokenbridge .pytest_cache .mypy_cache .ruff_cache *.egg-info
