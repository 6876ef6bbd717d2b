# Keskar's 1-D interpolation between the small- and large-batch solutions of each pair. The
# job reads every candidate's status and interpolates between the healthy ends, so a
# diverged or stalled run is never one of them.


rule interpolate_pair:
    input:
        data=get_pair_data,
        trained=pair_markers,
    output:
        "results/interpolation/{pair}.parquet",
    params:
        pair=lambda wildcards: vars(PAIRS[wildcards.pair]),
        run_dirs=pair_run_dirs,
        spec=lambda wildcards: RUNS[PAIRS[wildcards.pair].candidates[0]].to_dict(),
        cfg=lambda wildcards: config["studies"][PAIRS[wildcards.pair].study]["interpolation"],
        device=config["device"],
    threads: config["threads_per_run"]
    resources:
        gpu=config["gpus_per_run"],
    log:
        "results/logs/interpolate_pair/{pair}.log",
    script:
        "../../scripts/interpolate_pair.py"
