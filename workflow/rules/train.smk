# One job per grid point. A job that dies resumes from its newest checkpoint when rerun.


rule train:
    input:
        data=get_train_data,
    output:
        metrics="results/runs/{run}/metrics.parquet",
        final="results/runs/{run}/final.pt",
        summary="results/runs/{run}/run.json",
    params:
        spec=get_spec,
        device=config["device"],
    threads: config["threads_per_run"]
    resources:
        gpu=config["gpus_per_run"],
    log:
        "results/logs/train/{run}.log",
    script:
        "../../scripts/train.py"
