# One job per stack: the runs of one model and batch size that differ only in LR rule, base LR
# and seed train together (batchlab.train.loop.train_stack), each into its own run directory. The
# job writes results/stacks/<stack>.json when every member has finished; what reads a run
# waits for that file. A member that finished before with the same config and code is kept,
# so a stack that gains a seed or an LR trains only the new runs. A job that dies resumes
# every member from its newest checkpoint when rerun.


rule train_stack:
    input:
        data=lambda wildcards: data_file(RUNS[STACKS[wildcards.stack].runs[0]].dataset),
    output:
        "results/stacks/{stack}.json",
    params:
        specs=lambda wildcards: [RUNS[run_id].result_dict() for run_id in STACKS[wildcards.stack].runs],
        run_dirs=lambda wildcards: [run_dir(run_id) for run_id in STACKS[wildcards.stack].runs],
        device=DEVICE,
        library=library("scripts/train.py"),
    threads: config["threads_per_run"]
    resources:
        gpu=config["gpus_per_run"],
    log:
        "results/logs/train/{stack}.log",
    script:
        "../../scripts/train.py"
