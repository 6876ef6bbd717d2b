# Shared helpers: where things live, and what each run needs.

wildcard_constraints:
    run=r".+",
    stack=r".+",
    pair=r".+",
    dataset=r"mnist1d|cifar10|cifar100",


def run_dir(run_id):
    return f"results/runs/{run_id}"


def data_file(dataset):
    return f"results/data/{dataset}.npz"


def get_train_data(wildcards):
    return data_file(RUNS[wildcards.run].dataset)


def stack_marker(stack_id):
    """Written when a stack's job has finished every member; what depends on a run waits for it."""
    return f"results/stacks/{stack_id}.json"


def run_marker(run_id):
    return stack_marker(RUN_STACK[run_id])


def all_stack_markers():
    return [stack_marker(stack_id) for stack_id in STACKS]


def get_spec(wildcards):
    return RUNS[wildcards.run].to_dict()


def all_run_files(name):
    return [f"{run_dir(run_id)}/{name}" for run_id in RUNS]


def get_analysis_cfg(wildcards):
    return config["studies"][RUNS[wildcards.run].study]["analysis"]


def pair_run_dirs(wildcards):
    return [run_dir(run_id) for run_id in PAIRS[wildcards.pair].candidates]


def pair_markers(wildcards):
    return sorted({run_marker(run_id) for run_id in PAIRS[wildcards.pair].candidates})


def get_pair_data(wildcards):
    return data_file(RUNS[PAIRS[wildcards.pair].candidates[0]].dataset)
