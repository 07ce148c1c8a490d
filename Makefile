# Two entry points for a fresh machine: `make run` and `make test`.
# Both create the virtual environment in .venv when it is missing.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= ../shared/data

export KEDRO_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export MPLBACKEND := Agg
export KEDRO_LOGGING_CONFIG := $(CURDIR)/conf/logging.yml

.PHONY: run test run-real benchmark benchmark-segmentation viz clean-data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name lungct-kedro --display-name "Python (lungct_kedro)"
	touch $(STAMP)

## Build the dataset from the synthetic phantom, train and test segmentation.
run: $(STAMP)
	$(BIN)/kedro run

## Run the whole test suite (real-data tests read ../shared/data).
test: $(STAMP)
	$(BIN)/python -m pytest

## The same default run on a folder laid out like the real public sample.
run-real: $(STAMP)
	$(BIN)/kedro run --env=real --params=data_dir=$(abspath $(DATA_DIR))

## Loader and training-step throughput, written to docs/benchmarks.md.
benchmark: $(STAMP)
	$(BIN)/python benchmarks/loader_vs_step.py --output docs/benchmarks.md

## Segmentation methods by grouped cross-validation over seeds, phantom and DATA_DIR (about 35 min each).
benchmark-segmentation: $(STAMP)
	$(BIN)/python benchmarks/segmentation_methods.py --data-dir $(abspath $(DATA_DIR)) $(BENCHMARK_ARGS)

## Pipeline lineage in the browser (http://127.0.0.1:4141).
viz: $(STAMP)
	$(BIN)/kedro viz run --no-browser

## Static export of the lineage page into build/ (docs/lineage.md says how to serve it).
.PHONY: viz-build
viz-build: $(STAMP)
	$(BIN)/kedro viz build

## Delete every pipeline output under data/ (the layer folders stay).
clean-data:
	find data -mindepth 2 -maxdepth 2 ! -name .gitkeep -exec rm -rf {} +
