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

# The embedded offline default: the model table, then ResNet-20 trained on scikit-learn's digits
# (about 90 s on 2 CPU cores; a second `make demo` finds the run finished and only prints its summary).
demo: setup
	$(BIN)/resnet-repro models
	$(BIN)/resnet-repro fit --config experiments/digits/base.yaml --run_dir runs/digits/resnet20 \
		--trainer.enable_progress_bar false
	cat runs/digits/resnet20/summary.json

test: setup
	$(BIN)/python -m pytest -q
