# Two entry points: `make demo` and `make test`. Both do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup data lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

data: setup
	$(BIN)/taskpack data fetch mnist

demo: data
	$(BIN)/taskpack run recipes/quickstart.yaml --fresh
	$(BIN)/taskpack inspect mlruns/runs/quickstart/store.tpk

test: data
	$(BIN)/ruff check pipeline search compilers tests benchmarks
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check pipeline search compilers tests benchmarks

clean:
	rm -rf $(VENV) mlruns
