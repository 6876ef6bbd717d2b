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

.PHONY: demo run test check smoke estimate venv browser slurm datasets clean-results

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# Where torch sees CUDA, the gpu profile: each training job on a GPU of its own, at most its
# `resources: gpu` at once (workflow/profiles/gpu/config.yaml). PROFILE=<folder> names another.
# Expanded when the recipe runs, after .venv exists.
PROFILE ?= $(shell $(BIN)/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null && echo workflow/profiles/gpu)

# The greedy scheduler: snakemake's default ILP job selection costs about 2 s of a core per
# job on a grid of short jobs (measured: 163 s against 94 s for 36 tiny jobs on 2 cores).
# check-config first: it refuses a config that cannot run and prints its estimated device-hours.
# `make run CONFIG=config/golmant.yaml` does the same for another config (`make demo` is a run of
# the default one).
demo run: $(STAMP)
	$(BIN)/python -m batchlab check-config $(CONFIG)
	$(BIN)/snakemake --cores $(CORES) --scheduler greedy --configfile $(CONFIG) $(patsubst %,--profile %,$(PROFILE)) $(SNAKEMAKE_ARGS)

# A paper preset's smoke variant (config/smoke/<preset>.yaml laid over config/<preset>.yaml) on
# small generated files in the real formats, written first under data/fake/: every rule runs in
# a few minutes on a CPU. Its numbers mean nothing about the paper.
smoke: $(STAMP)
	$(BIN)/python -m batchlab smoke-data config/$(PRESET).yaml config/smoke/$(PRESET).yaml
	$(BIN)/snakemake --cores $(CORES) --scheduler greedy --configfile config/$(PRESET).yaml config/smoke/$(PRESET).yaml $(SNAKEMAKE_ARGS)

# Runs, jobs, steps and device-hours of a config before launching it (benchmarks/throughput.csv),
# first saying which data sizes are official fallbacks and whether the longest jobs fit the SLURM
# profile's runtime.
estimate: $(STAMP)
	$(BIN)/python -m batchlab estimate $(CONFIG)

# Test files are shared among one worker per core (pytest-xdist), each file whole on one worker
# and the longest first (tests/conftest.py; --no-loadscope-reorder keeps that order, where xdist
# would start with the files of most tests), so the module fixtures a file shares (a trained
# workflow, a SLURM cluster, a preset's smoke run) are built once. Every test runs torch on one
# thread (tests/conftest.py): a serial run would leave all cores but one idle.
# The 20 slowest tests are listed at the end.
TEST_WORKERS ?= auto
test: $(STAMP) browser slurm datasets
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

# The fast tier for the inner loop: the unit tests but the slow ones (marked `slow`, several
# seconds each), and one tiny workflow end to end (marked `check`); none that runs the real
# snakemake otherwise. `make test` before a commit.
check: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist load -m "(not workflow and not slow) or check" --durations=10

# The report is checked in a real headless browser: Debian's Chromium and its driver,
# installed here when they are missing and apt-get can (as root, as on CI).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "could not install chromium and chromium-driver: the report's browser test will fail"

# The SLURM profile is tested on a real one-node SLURM (tests/slurm_cluster.py starts and stops
# its daemons): Debian's slurmctld, slurmd, client and munge, installed here when missing.
slurm:
	@command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null; } || \
	  echo "could not install slurmctld, slurmd, slurm-client and munge: the SLURM tests will fail"

# Fashion-MNIST, the real data set the tests train on end to end, is Debian's dataset-fashion-mnist:
# its four IDX files in /usr/share/datasets/fashion-mnist (the data set's default root), installed
# here when missing and apt-get can.
datasets:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
	  echo "could not install dataset-fashion-mnist: the tests on the real Fashion-MNIST will be skipped"

clean-results:
	rm -rf results .snakemake
