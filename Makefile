# bench: `make bench` (demo, offline), `make bench CONFIG=coco.yaml`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= demo
# The CPU wheel of torch lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_DATA   := data/demo
DEMO_MODELS := models/demo
# The demo's fine-tuning data: 2,000 other generated images (seed 1), none of them evaluated.
DEMO_FT_DATA := data/demo-ft
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup bench data models test regress baseline perf lint clean help

help:
	@echo "make bench [CONFIG=name|path]  run a benchmark (default: the offline demo) and print the report path"
	@echo "make test                      run the test suite (offline)"
	@echo "make regress                   run the demo and compare it with reports/baselines/demo.json"
	@echo "make perf [QUICK=1] [PERF=e2e]  speed/memory scripts in benchmarks/ (ratios vs targets; results.json for bench report)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

setup: $(STAMP)

data: setup
	@$(BIN)/bench make-data $(DEMO_DATA) >/dev/null
	@$(BIN)/bench make-data $(DEMO_FT_DATA) --train 2000 --val 50 --test 0 --seed 1 >/dev/null

models: setup
	@$(BIN)/bench make-models $(DEMO_MODELS) >/dev/null

bench: setup data models
	$(BIN)/bench run $(CONFIG)

test: setup
	$(BIN)/python -m pytest

# A fresh run folder each time (a left-over one could be compared instead of this run); the verdict
# table is kept next to the run for the CI log. Quality tolerances: see README "Regression tracking".
regress: setup data models
	rm -rf reports/runs/regress-latest
	$(BIN)/bench run demo --out reports/runs/regress-latest --no-progress
	$(BIN)/bench compare reports/runs/regress-latest reports/baselines/demo.json --fail-on quality \
		--output reports/runs/regress-latest/compare.md

baseline: setup data models
	rm -rf reports/runs/baseline-candidate
	$(BIN)/bench run demo --out reports/runs/baseline-candidate --no-progress
	$(BIN)/bench baseline accept reports/runs/baseline-candidate --to reports/baselines/demo.json

# PERF: a subset of the scripts (`python -m benchmarks.run_all --list`), e.g. PERF="harness e2e".
perf: setup data models
	$(BIN)/python -m benchmarks.run_all $(PERF) $(if $(QUICK),--quick)

lint: setup
	$(BIN)/python -m ruff check bench tests benchmarks || true

clean:
	rm -rf reports/runs .cache/bench
