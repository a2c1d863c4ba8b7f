# The two commands of the quick start: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,redis]'
	touch $(STAMP)

install: $(STAMP)  ## set up .venv with Conveyor and the test tools

demo: $(STAMP)  ## worker + sample jobs on the embedded SQLite default, shown live
	$(BIN)/conveyor demo

test: $(STAMP)  ## every test: unit, contract (every broker), acceptance (real worker processes)
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff and mypy
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy src

bench: $(STAMP)  ## benchmark on SQLite; URL=redis://... for another broker
	$(BIN)/python -m bench --url $${URL:-sqlite:///$$(mktemp -d)/bench.db}

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts conveyor-demo.*
