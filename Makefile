# Two entry points: `make demo` runs the workflow on config.yaml, ending in results/report.html;
# `make test` runs the tests.
# Each creates .venv with the pinned dependencies on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CORES  ?= all
CONFIG ?= config.yaml
SNAKEMAKE_ARGS ?=

PRESET ?= golmant

.PHONY: demo test smoke estimate venv browser clean-results

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The greedy scheduler: snakemake's default ILP job selection costs about 2 s of a core per
# job on a grid of short jobs (measured: 163 s against 94 s for 36 tiny jobs on 2 cores).
demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --scheduler greedy --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

# A paper preset's smoke variant (config/smoke/<preset>.yaml laid over config/<preset>.yaml) on
# small generated files in the real formats, written first under data/fake/: every rule runs in
# a few minutes on a CPU. Its numbers mean nothing about the paper.
smoke: $(STAMP)
	$(BIN)/python -m batchlab smoke-data config/$(PRESET).yaml config/smoke/$(PRESET).yaml
	$(BIN)/snakemake --cores $(CORES) --scheduler greedy --configfile config/$(PRESET).yaml config/smoke/$(PRESET).yaml $(SNAKEMAKE_ARGS)

# Runs, jobs, steps and device-hours of a config before launching it (benchmarks/throughput.csv).
estimate: $(STAMP)
	$(BIN)/python -m batchlab estimate $(CONFIG)

test: $(STAMP) browser
	$(BIN)/python -m pytest

# The report is checked in a real headless browser: Debian's Chromium and its driver,
# installed here when they are missing and apt-get can (as root, as on CI).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "could not install chromium and chromium-driver: the report's browser test will fail"

clean-results:
	rm -rf results .snakemake
