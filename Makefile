# The ledger harness. `make help` lists the targets. A fresh clone needs only
# `make run ITER=eleventh` and `make test`: every target depends on `setup`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
LEDGER ?= runs.yaml
ITER   ?=
PROFILE ?=
DATA   ?=
export TF_CPP_MIN_LOG_LEVEL := 2

RUN_FLAGS = --ledger $(LEDGER) $(if $(PROFILE),--profile $(PROFILE)) $(if $(DATA),--data $(DATA))

.DEFAULT_GOAL := help
.PHONY: help setup run all table ui test bench lr-find validate list clean-venv faults audit

help: ## List the targets with a line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  Variables: ITER=name  PROFILE=full|cpu|smoke  DATA=dir  LEDGER=file  GPU=1 (setup with CUDA TensorFlow)"

setup: $(STAMP) ## Create .venv and install the harness with its pinned dependencies (runs once)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev$(if $(GPU),$(comma)gpu)]'
	@touch $(STAMP)

comma := ,

run: setup ## Train one iteration: make run ITER=eleventh [PROFILE=..] [DATA=..] [LEDGER=..]
	@test -n "$(ITER)" || { echo "usage: make run ITER=name (see: make list)"; exit 2; }
	$(BIN)/harness run $(ITER) $(RUN_FLAGS)

all: setup ## Train every iteration in ledger order, skipping those already finished with the same config
	$(BIN)/harness run --all $(RUN_FLAGS)

list: setup ## List the ledger's iterations
	@$(BIN)/harness list --ledger $(LEDGER)

validate: setup ## Check every iteration of the ledger
	@$(BIN)/harness validate --ledger $(LEDGER)

table: setup ## Regenerate the results table from MLflow
	$(BIN)/harness table --ledger $(LEDGER)

ui: setup ## Open the MLflow UI over mlruns/ (prints the URL)
	$(BIN)/harness ui

lr-find: setup ## LR range test: make lr-find ITER=second
	@test -n "$(ITER)" || { echo "usage: make lr-find ITER=name"; exit 2; }
	$(BIN)/harness lr-find $(ITER) $(RUN_FLAGS)

test: setup ## Run the test suite (real TensorFlow and MLflow on CPU, tiny data)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

faults: setup ## Run the fault suite (bad input, signals, kills, security) and write FAULTS.md
	$(BIN)/python -m tests.faults_report --out FAULTS.md $(PYTEST_ARGS)

audit: setup ## Check the installed, pinned dependencies against PyPI/OSV advisories (pip-audit; needs network)
	$(BIN)/pip install --quiet -e '.[audit]'
	$(BIN)/pip-audit --local --skip-editable --desc on --format markdown --output mlruns/audit.md || true
	@cat mlruns/audit.md 2>/dev/null || echo "pip-audit wrote no report (no network?)"

bench: setup ## Run the benchmarks in bench/ and print one markdown table
	$(BIN)/python -m bench.run_all

clean-venv: ## Remove .venv (the next target reinstalls)
	rm -rf $(VENV)
