# Two commands on a fresh machine: `make demo` and `make test` (both install into .venv first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

# torch first, from the CPU build: a looser requirement pulls the CUDA build and GBs of CUDA.
# llama-cpp-python compiles from source (5-13 minutes on 2 cores); pip caches the wheel.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[embedded,lucene,faiss,deepspeed,dev]"
	touch $(STAMP)

demo: install
	$(BIN)/customir run examples/local.yaml

test: install
	$(BIN)/python -m pytest

# Everything except the end-to-end run with the real LLM.
test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check customir tests benchmarks jobs examples

clean:
	rm -rf runs .pytest_cache
