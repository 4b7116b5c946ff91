# mlpipe: `make` lists the targets.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv and install the project with its dev extras

test: install ## run the whole test suite (unit, integration, slow)
	$(BIN)/python -m pytest -v -ra

test-fast: install ## run the unit tests only
	$(BIN)/python -m pytest -m "not integration and not slow" -q

lint: install ## check style with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install ## reformat with ruff
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean: ## remove the local tracking store and caches (keeps .venv)
	rm -rf mlruns mlartifacts mlflow.db .pytest_cache .ruff_cache
