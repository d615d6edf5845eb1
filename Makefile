# Set-up and the two entry points of the README: `make run` (demo) and `make test`.
SHELL := /bin/bash
export KEDRO_DISABLE_TELEMETRY := 1

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-dev run test lint test-fast viz notebook peer mlflow-ui benchmark clean

install: $(VENV)/.installed          ## what the pipelines need, nothing more
install-dev: $(VENV)/.installed-dev  ## + the extras: test, text (GenePT summaries), eval, notebook

# constraints.txt pins every transitive dependency, so a fresh machine gets the same versions.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,text,eval,notebook]"
	touch $@

run: install            ## the whole default pipeline on the built-in demo screen
	$(BIN)/kedro run

LINTED := src tests benchmarks

test: lint              ## style checks, then the whole test suite (end-to-end runs included)
	$(BIN)/python -m pytest

lint: install-dev       ## ruff: lint rules and formatting (pyproject.toml [tool.ruff])
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

test-fast: install-dev  ## skip the slow end-to-end runs
	$(BIN)/python -m pytest -m "not slow"

# arc-state (benchmarks/training_step.py's peer) in its own environment: it needs omegaconf<2.4
# (hydra-core) where Kedro's pin is 2.4.0, so everything else stays at constraints.txt's pins.
peer: .venv-peer/.installed
.venv-peer/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv .venv-peer
	grep -v '^omegaconf==' constraints.txt > .venv-peer/constraints.txt
	.venv-peer/bin/python -m pip install --quiet -c .venv-peer/constraints.txt -e ".[peer]"
	touch $@

# The MLflow UI in its own environment: the full `mlflow` needs pyarrow<26 where the project pins
# 26.0.1 (the project installs mlflow-skinny, the client); same version, as the store's schema is.
MLFLOW_VERSION = $(shell sed -n 's/^mlflow-skinny==//p' constraints.txt)
mlflow-ui: .venv-mlflow/.installed   ## the MLflow UI on the project's tracked runs (mlflow.db)
	.venv-mlflow/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db
.venv-mlflow/.installed: constraints.txt
	$(PYTHON) -m venv .venv-mlflow
	grep -v '^pyarrow==' constraints.txt > .venv-mlflow/constraints.txt
	.venv-mlflow/bin/python -m pip install --quiet -c .venv-mlflow/constraints.txt "mlflow==$(MLFLOW_VERSION)"
	touch $@

viz: install
	$(BIN)/kedro viz run

notebook: install-dev   ## JupyterLab with `catalog`, `session` and `pipelines` loaded
	$(BIN)/kedro jupyter lab

benchmark: install      ## ingestion memory/time on a simulated 1M-cell screen (minutes, ~2 GB)
	$(BIN)/python benchmarks/ingestion_memory.py --cells 1000000 --genes 2000

clean:
	rm -rf $(VENV) .venv-peer .venv-mlflow
