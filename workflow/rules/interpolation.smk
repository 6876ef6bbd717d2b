# Keskar's 1-D interpolation between the small- and large-batch solutions of each pair.


rule interpolate_pair:
    input:
        data=get_pair_data,
        small=lambda wildcards: pair_file(wildcards, "small", "final.pt"),
        large=lambda wildcards: pair_file(wildcards, "large", "final.pt"),
    output:
        "results/interpolation/{pair}.parquet",
    params:
        pair=lambda wildcards: vars(PAIRS[wildcards.pair]),
        spec=lambda wildcards: RUNS[PAIRS[wildcards.pair].small].to_dict(),
        cfg=lambda wildcards: config["studies"][PAIRS[wildcards.pair].study]["interpolation"],
        device=config["device"],
    threads: config["threads_per_run"]
    resources:
        gpu=config["gpus_per_run"],
    log:
        "results/logs/interpolate_pair/{pair}.log",
    script:
        "../../scripts/interpolate_pair.py"
