# wcnorm: `make help` lists the targets. Every target sets up the environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNS   ?= runs

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast demo lint tables bench wheels wheel-check device-check clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install wcnorm with its dev extras
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Both run the tests in one process per core (pytest-xdist): most of the suite's time is
# end-to-end runs in subprocesses, which overlap well.
test: setup ## run the whole test suite (CPU, one test process per core)
	$(BIN)/pytest -q -n auto

test-fast: setup ## the suite without the longer end-to-end runs
	$(BIN)/pytest -q -n auto -m "not slow"

demo: setup ## BN vs BN+WC vs ENorm on the bundled digits data (CPU, under a minute), then the table
	$(BIN)/wcnorm train -m experiment=demo
	$(BIN)/wcnorm table runs/demo --out runs/demo/table

lint: setup ## ruff
	$(BIN)/ruff check wcnorm tests scripts

tables: setup ## regenerate every table, plot and claims file in results/ (and its verdict index) from $(RUNS) (smoke runs: results/smoke)
	$(BIN)/wcnorm report $(RUNS) --out results
	if [ -d $(RUNS)/smoke ]; then $(BIN)/wcnorm report $(RUNS)/smoke --out results/smoke --budgets smoke; fi

bench: setup ## throughput and overhead figures -> results/bench/
	$(BIN)/wcnorm bench

# Pure-Python wheels of what a GPU machine with PyTorch but no package index lacks,
# at the versions .venv runs; scripts/device_check.sh installs them from .whl/.
wheels: setup ## .whl/: Hydra and OmegaConf wheels for an offline GPU machine
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: -d .whl \
		"hydra-core==$$($(BIN)/python -c 'import hydra; print(hydra.__version__)')" \
		"omegaconf==$$($(BIN)/python -c 'import omegaconf; print(omegaconf.__version__)')"
	$(BIN)/python -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3"

wheel-check: ## build the wheel, install it in a fresh venv, run the README's library example and one run from it
	bash scripts/wheel_check.sh

device-check: ## on a CUDA machine: GPU tests, `wcnorm bench --size gpu`, a real-size epoch -> results/device-check/
	bash scripts/device_check.sh

clean: ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
