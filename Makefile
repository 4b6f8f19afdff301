# The commands people type. `make test` and `make demo` create the environment themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: env test demo lint format bench clean

env: $(STAMP)

# CPU torch first (the wheel that lies on disk here; an unpinned torch would pull a CUDA build),
# then the package with its pinned dependencies. On a GPU machine install the CUDA torch==2.13.0
# into the venv before `make env` and pip keeps it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check genmodels pipelines tests benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/genmodels demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check genmodels pipelines tests benchmarks
	$(BIN)/ruff format --check genmodels pipelines tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format genmodels pipelines tests benchmarks
	$(BIN)/ruff check --fix genmodels pipelines tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/train_overhead.py

clean:
	rm -rf outputs mlflow.db mlruns ray_results .pytest_cache
