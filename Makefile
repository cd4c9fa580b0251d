# Two entry points: `make demo` and `make test`. Both do all set-up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup toolchain postgres chromium data lint typecheck clean bench bench-deepsparse

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) toolchain postgres

# Debian's aarch64 cross gcc links cross-compiled TVM libraries (aarch64 export bundles).
# Best effort: without it (no root, no apt) the aarch64 test skips and says why.
toolchain:
	@command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || \
	  { (apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null 2>&1)) || \
	    echo "note: gcc-aarch64-linux-gnu not installed; aarch64 export tests will skip"; }

# Debian's PostgreSQL server: the distributed-search test starts a throwaway cluster with its
# initdb / pg_ctl. Best effort like the toolchain: without it that test skips and says why.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { (apt-get install -y -qq postgresql >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -qq postgresql >/dev/null 2>&1)) || \
	    echo "note: postgresql not installed; the PostgreSQL search test will skip"; }

# Headless Chromium renders the run report in a test (tests/pipeline_tests/test_run_report.py).
# Best effort like toolchain: without it (no root, no apt) that test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && \
	      apt-get install -y -qq chromium >/dev/null 2>&1)) || \
	    echo "note: chromium not installed; the report's browser test will skip"; }

data: setup
	$(BIN)/taskpack data fetch mnist

demo: data
	$(BIN)/taskpack run recipes/quickstart.yaml --fresh
	$(BIN)/taskpack inspect mlruns/runs/quickstart/store.tpk

TYPECHECK := $(BIN)/mypy pipeline search compilers

# Any non-zero exit fails the recipe, pytest's 5 (no tests collected) included.
test: data chromium
	$(BIN)/ruff check pipeline search compilers tests benchmarks
	$(TYPECHECK)
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check pipeline search compilers tests benchmarks

typecheck: setup
	$(TYPECHECK)

clean:
	rm -rf $(VENV) mlruns

# Peer runtimes for benchmarks/latency.py (optional; the product does not need them).
# OpenVINO installs into .venv through the `bench` extra. DeepSparse 1.8.0 pins numpy<2, onnx<1.15
# and pydantic<2.8, so it gets its own venv (Python 3.11 or older: it has no later wheels), which
# latency.py runs as a worker (--deepsparse-python, default .venv-deepsparse/bin/python).
bench: $(STAMP)
	$(BIN)/pip install -qq -e '.[bench]'

# (PY=python3.11 make bench-deepsparse where python3 is newer.)
bench-deepsparse:
	$(PY) -m venv .venv-deepsparse
	.venv-deepsparse/bin/pip install -qq deepsparse==1.8.0
