# The ledger harness. `make help` lists the targets. A fresh clone needs only
# `make run ITER=eleventh` and `make test`: every target depends on `setup`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp
LEDGER ?=
SETUP_LOG := $(VENV)/setup.log
ITER   ?=
PROFILE ?=
DATA   ?=
RAY    ?=
export TF_CPP_MIN_LOG_LEVEL := 2

LEDGER_FLAG = $(if $(LEDGER),--ledger $(LEDGER))
RUN_FLAGS = $(LEDGER_FLAG) $(if $(PROFILE),--profile $(PROFILE)) $(if $(DATA),--data $(DATA))
# A set-up step with its output in $(SETUP_LOG); on failure, the log's last lines.
quietly = $(1) >> $(SETUP_LOG) 2>&1 || { echo "setup: failed; the end of $(SETUP_LOG):"; tail -n 30 $(SETUP_LOG); exit 1; }

.DEFAULT_GOAL := help
.PHONY: help setup run all table ui test test-fast coverage lint bench lr-find validate list clean-venv server server-stop server-backup faults audit

help: ## List the targets with a line each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  Variables: ITER=name  PROFILE=full|cpu|smoke  DATA=dir  LEDGER=file (default: runs.yaml, else the"
	@echo "             experiments/*.yaml that has ITER)  GPU=1 (setup with CUDA TensorFlow)  RAY=auto|HOST:PORT (make all on Ray)"
	@echo "             SERVER_FLAGS='--port 5050 ...' (make server; see harness server --help)"

setup: $(STAMP) ## Create .venv and install the harness with its pinned dependencies (runs once)

$(STAMP): setup.cfg pyproject.toml
	@mkdir -p $(VENV) && : > $(SETUP_LOG)
	@echo "setup: 1/3 creating $(VENV) with $(PYTHON) (pip's output goes to $(SETUP_LOG))"
	@$(call quietly,$(PYTHON) -m venv $(VENV))
	@echo "setup: 2/3 upgrading pip"
	@$(call quietly,$(BIN)/pip install --upgrade pip)
	@echo "setup: 3/3 installing the harness and its pinned dependencies$(if $(GPU), with CUDA TensorFlow) (minutes)"
	@$(call quietly,$(BIN)/pip install -e '.[dev$(comma)sweep$(comma)cluster$(if $(GPU),$(comma)gpu)]')
	@touch $(STAMP)
	@echo "setup: done"

comma := ,

run: setup ## Train one iteration: make run ITER=eleventh [PROFILE=..] [DATA=..] [LEDGER=..]
	@test -n "$(ITER)" || { echo "usage: make run ITER=name (see: make list)"; exit 2; }
	$(BIN)/harness run $(ITER) $(RUN_FLAGS)

all: setup ## Train every iteration in ledger order, skipping those already finished with the same config; RAY=auto|ADDRESS: all at once on Ray
	$(BIN)/harness run --all $(RUN_FLAGS) $(if $(RAY),--ray $(RAY))

list: setup ## List every ledger's iterations, grouped (LEDGER=file: that ledger only)
	@$(BIN)/harness list $(if $(LEDGER),--ledger $(LEDGER),--all)

validate: setup ## Check every iteration of the ledger
	@$(BIN)/harness validate $(LEDGER_FLAG)

table: setup ## Regenerate the results table from MLflow (committed rows the store lacks are kept)
	$(BIN)/harness table $(LEDGER_FLAG)

ui: setup ## Open the MLflow UI over mlruns/ (prints the URL)
	$(BIN)/harness ui

server: setup ## Start the team tracking server: PostgreSQL + MLflow on http://127.0.0.1:5000 (README: A team server)
	$(BIN)/harness server $(SERVER_FLAGS)

server-stop: setup ## Stop what `make server` started, by PID
	$(BIN)/harness server --stop

server-backup: setup ## Back up the team server (dump, artifacts, manifest) to mlruns/server-backups/, last 7 kept; BACKUP_FLAGS='DIR --keep N'
	$(BIN)/harness server --backup $(BACKUP_FLAGS)

lr-find: setup ## LR range test: make lr-find ITER=second
	@test -n "$(ITER)" || { echo "usage: make lr-find ITER=name"; exit 2; }
	$(BIN)/harness lr-find $(ITER) $(RUN_FLAGS)

lint: setup ## Check the layers contract (import-linter, .importlinter; docs/architecture.md)
	$(BIN)/lint-imports

# Three xdist workers on 2 cores: much of the suite waits (on subprocesses, a Ray head, the team
# server's retries), and a third worker fills those waits. Each test module is one xdist group,
# the team-server tests and the Ray tests one each, longest first (tests/conftest.py).
XDIST := -n 3 --dist loadgroup --no-loadscope-reorder

test: setup lint ## The whole suite, team-server tests included, on 3 workers (18-20 min on a clean clone, 2 cores)
	HARNESS_LOAD_SECONDS=$${HARNESS_LOAD_SECONDS:-5} $(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

coverage: setup ## The whole suite with line coverage of harness/ (terminal summary, HTML in mlruns/coverage)
	HARNESS_LOAD_SECONDS=$${HARNESS_LOAD_SECONDS:-5} $(BIN)/python -m pytest $(XDIST) --cov=harness \
	  --cov-report=term:skip-covered --cov-report=html:mlruns/coverage $(PYTEST_ARGS)

test-fast: setup lint ## The inner loop: no training, servers, browser or fault suite (204 tests in 55 s on a clean clone, 2 quiet cores)
	$(BIN)/python -m pytest $(XDIST) -m "not train and not server and not browser and not faults and not slow" $(PYTEST_ARGS)

faults: setup ## Run the fault suite (bad input, signals, kills, security) and write FAULTS.md
	$(BIN)/python -m tests.faults_report --out FAULTS.md $(PYTEST_ARGS)

audit: setup ## Check the installed, pinned dependencies against PyPI/OSV advisories (pip-audit; needs network)
	$(BIN)/pip install --quiet -e '.[audit]'
	$(BIN)/python -m tests.audit_report --out mlruns/audit.md

bench: setup ## Run the benchmarks in bench/ and print one markdown table
	$(BIN)/python -m bench.run_all

clean-venv: ## Remove .venv (the next target reinstalls)
	rm -rf $(VENV)
