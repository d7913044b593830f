# modelvc: `make demo` runs the story on an embedded broker; `make test` checks everything.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit integration bench up down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m modelvc.demo

lint: $(STAMP)
	$(BIN)/ruff check streams workers modelvc tests bench
	$(BIN)/ruff format --check streams workers modelvc tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration tests/e2e

test: lint typecheck $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	$(BIN)/python -m bench.fold_replay
	$(BIN)/python -m bench.commit_roundtrip
	$(BIN)/python -m bench.streams_memory
	$(BIN)/python -m bench.serving

up: $(STAMP)
	$(BIN)/modelvc up

down: $(STAMP)
	$(BIN)/modelvc down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .modelvc
