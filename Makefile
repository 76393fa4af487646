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

# The embedded offline default: plain-20/56 and ResNet-20/56 trained on scikit-learn's digits, then the report
# (table and degradation figure) in results/demo/ and the layer responses (Figure 7) in results/demo-responses/.
# One run after another: two side by side (--parallel 2) measured slower for the whole demo (README, Speed).
# A second `make demo` skips the finished runs.
demo: setup
	$(BIN)/resnet-repro run experiments/demo.yaml
	$(BIN)/resnet-repro report runs/demo --out results/demo
	$(BIN)/resnet-repro responses runs/demo --out results/demo-responses

test: setup
	$(BIN)/python -m pytest -q
