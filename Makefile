# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch on disk here; a bare `torch` requirement would pull CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: demo test lint bench system-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[test]"
	touch $(STAMP)

## The main job: a real CT series at simulated low dose, and a preview picture.
demo: $(STAMP)
	$(BIN)/manas-infer demo --out demo-output

system-tools:
	@bash scripts/install-system-tools.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## The whole test suite (CI runs exactly this through .ci/run).
test: $(STAMP) system-tools lint
	MANAS_NO_PROGRESS=1 $(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_simulator.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
