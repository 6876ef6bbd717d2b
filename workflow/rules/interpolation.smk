# Keskar's 1-D interpolation between the small- and large-batch solutions of each pair, one job
# per study for all its pairs. The job reads every candidate's status and interpolates between
# the healthy ends, so a diverged or stalled run is never one of them.


rule interpolate_study:
    input:
        data=lambda wildcards: data_file(config["studies"][wildcards.study]["dataset"]),
        trained=study_pair_markers,
    output:
        "results/interpolation/{study}.parquet",
    params:
        pairs=lambda wildcards: [vars(pair) for pair in STUDY_PAIRS[wildcards.study]],
        run_dirs=lambda wildcards: [[run_dir(r) for r in pair.candidates] for pair in STUDY_PAIRS[wildcards.study]],
        specs=lambda wildcards: [RUNS[pair.candidates[0]].result_dict() for pair in STUDY_PAIRS[wildcards.study]],
        cfg=lambda wildcards: config["studies"][wildcards.study]["interpolation"],
        device=DEVICE,
        library=library("scripts/interpolate_study.py"),
    threads: config["threads_per_run"]
    resources:
        gpu=config["gpus_per_run"],
    log:
        "results/logs/interpolate/{study}.log",
    script:
        "../../scripts/interpolate_study.py"
