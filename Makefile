# The README's two commands. Each sets up .venv itself (python3 -m venv + pip) when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export WANDB_MODE ?= offline

.PHONY: demo test setup
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# (the filter hides a warning this build machine's pip config prints for every package)
	$(BIN)/python -m pip install --quiet -e '.[dev]' 2>&1 | { grep -v "^WARNING: Location" || true; }; exit $${PIPESTATUS[0]}
	touch $@

demo: setup
	$(BIN)/resnet-repro models

test: setup
	$(BIN)/python -m pytest -q
