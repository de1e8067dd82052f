# The one obvious way in: `make dev` runs tokenbridge, `make test` runs the suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

HOST   ?= 127.0.0.1

.PHONY: install install-run lock dev test test-fast lint format bench bench-cluster soak chaos conformance clean editable

# Installs come from the lock (scripts/lock.py): the exact versions in requirements.txt (what running needs, as a
# PaaS deploy installs it) and requirements-dev.txt (plus the test, lint and benchmark tools), never whatever is
# newest today. `make lock` writes both again from pyproject.toml; `make lock UPGRADE=1` moves to newer releases.
PIP_VERSION := 26.3

# `install`: what running and testing need; `install-run`: only what running needs (`make dev`).
install: $(VENV)/.installed
install-run: $(VENV)/.installed-run

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "tokenbridge needs Python 3.11 or newer (set PYTHON=...)")'
	@echo "Creating the virtualenv $(VENV) ..."
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==$(PIP_VERSION)"

# requirements.txt names the Python client by its folder, which pip builds in an environment of its own: PIP_CONSTRAINT
# holds that environment's setuptools to the lock's pin too.
BUILD_PINS := $(CURDIR)/$(VENV)/build-pins.txt
LOCKED_PIP := PIP_CONSTRAINT=$(BUILD_PINS) $(BIN)/python -m pip install --quiet

# The project itself goes in last, without its dependencies (they came from the lock) and built by the locked setuptools.
$(VENV)/.installed-run: pyproject.toml requirements.txt clients/python/pyproject.toml | $(VENV)/bin/python
	@echo "Installing tokenbridge and what it needs to run into $(VENV), from requirements.txt (the first time takes about 30 s) ..."
	@grep -E '^setuptools==' requirements.txt > $(BUILD_PINS)
	@$(LOCKED_PIP) -r requirements.txt
	@$(MAKE) --no-print-directory editable
	@touch $@

$(VENV)/.installed: pyproject.toml requirements.txt requirements-dev.txt clients/python/pyproject.toml | $(VENV)/bin/python
	@echo "Installing tokenbridge with its test and lint tools into $(VENV), from requirements-dev.txt (the first time takes a minute or two) ..."
	@grep -E '^setuptools==' requirements.txt > $(BUILD_PINS)
	@$(LOCKED_PIP) -r requirements-dev.txt
	@$(MAKE) --no-print-directory editable
	@touch $@ $(VENV)/.installed-run

# The project and its Python client (clients/python, one source) as editable installs: the checkout's code runs.
editable:
	@PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e ./clients/python -e .

lock: install-run
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade)

dev: install-run
	$(BIN)/tokenbridge dev --port $(PORT) --host $(HOST)

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
	$(BIN)/python -m bench

bench-cluster: install
	$(BIN)/python -m bench.cluster

# The whole stack at steady load for an hour (SOAK_MINUTES): the memory of every process, minute by minute.
soak: install
	$(BIN)/python -m bench.soak

# Mixed load on two of every process while faults are injected at random; checks every generation (bench/chaos).
# CHAOS_DURATION_S, CHAOS_CONCURRENCY, CHAOS_FAULT_INTERVAL_S, CHAOS_SEED, ...: python -m bench.chaos --help
chaos: install
	$(BIN)/python -m bench.chaos

# The official Durable Streams server conformance suite (npm, pinned; needs Node.js and npm) against the Procfile's
# processes; writes docs/conformance-results.md. CONFORMANCE_ARGS: --url <base URL> tests a server already running.
conformance: install
	$(BIN)/python scripts/conformance.py $(CONFORMANCE_ARGS)

clean:
	rm -rf $(VENV) .tokenbridge .pytest_cache .mypy_cache .ruff_cache *.egg-info
