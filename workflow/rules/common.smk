# Shared helpers: where things live, and what each run needs.
from batchlab.data.catalog import NAMES as DATASET_NAMES


wildcard_constraints:
    stack=r".+",
    study=r"[^/]+",
    dataset="|".join(DATASET_NAMES),


def run_dir(run_id):
    return f"results/runs/{run_id}"


def data_file(dataset):
    return f"results/data/{dataset}.npz"


def stack_marker(stack_id):
    """Written when a stack's job has finished every member; what depends on a run waits for it."""
    return f"results/stacks/{stack_id}.json"


def run_marker(run_id):
    return stack_marker(RUN_STACK[run_id])


def all_stack_markers():
    return [stack_marker(stack_id) for stack_id in STACKS]


def all_run_files(name):
    return [f"{run_dir(run_id)}/{name}" for run_id in RUNS]


def study_pair_markers(wildcards):
    return sorted({run_marker(run_id) for pair in STUDY_PAIRS[wildcards.study] for run_id in pair.candidates})
