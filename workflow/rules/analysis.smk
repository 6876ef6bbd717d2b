# Per-checkpoint measurements: epsilon-sharpness, Hessian spectrum, gradient noise scales.
# One job per stack with analysed runs, once the stack has trained: each analysed run's final
# checkpoint, and every other checkpoint if selected. One process for the stack's runs, because
# starting Python, torch and torch.func costs more than measuring one small run.


def stack_analysed_runs(wildcards):
    return ANALYSED_STACKS[wildcards.stack]


rule analyse_stack:
    input:
        data=lambda wildcards: data_file(RUNS[ANALYSED_STACKS[wildcards.stack][0]].dataset),
        trained=lambda wildcards: stack_marker(wildcards.stack),
    output:
        "results/analysis/{stack}.parquet",
    params:
        specs=lambda wildcards: [RUNS[run_id].result_dict() for run_id in stack_analysed_runs(wildcards)],
        run_dirs=lambda wildcards: [run_dir(run_id) for run_id in stack_analysed_runs(wildcards)],
        along_training=lambda wildcards: [ANALYSED[run_id] for run_id in stack_analysed_runs(wildcards)],
        cfg=lambda wildcards: config["studies"][RUNS[stack_analysed_runs(wildcards)[0]].study]["analysis"],
        device=DEVICE,
        library=library("scripts/analyse_stack.py"),
    threads: config["threads_per_run"]
    resources:
        gpu=config["gpus_per_run"],
    # Last among the jobs ready to run: training, tables and figures wait for nothing here,
    # so they go first and the analyses fill the cores around them.
    priority: -1
    log:
        "results/logs/analyse_stack/{stack}.log",
    script:
        "../../scripts/analyse_stack.py"
