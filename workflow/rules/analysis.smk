# Per-checkpoint measurements: epsilon-sharpness, Hessian spectrum, gradient noise scale.
# One job per analysed run: its final checkpoint, and every log-spaced one if selected.


rule analyse_checkpoints:
    input:
        data=get_train_data,
        trained=lambda wildcards: run_marker(wildcards.run),
    output:
        "results/analysis/{run}/sharpness.parquet",
    params:
        spec=get_spec,
        run_dir=lambda wildcards: run_dir(wildcards.run),
        cfg=get_analysis_cfg,
        along_training=lambda wildcards: ANALYSED[wildcards.run],
        device=config["device"],
    threads: config["threads_per_run"]
    resources:
        gpu=config["gpus_per_run"],
    log:
        "results/logs/analyse_checkpoints/{run}.log",
    script:
        "../../scripts/analyse_checkpoints.py"
