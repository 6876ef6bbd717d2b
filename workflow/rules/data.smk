# Each data set is prepared once into results/data/<name>.npz; training jobs read that file.


rule prepare_data:
    output:
        "results/data/{dataset}.npz",
    params:
        options=lambda wildcards: config["datasets"].get(wildcards.dataset, {}),
    log:
        "results/logs/prepare_data/{dataset}.log",
    script:
        "../../scripts/prepare_data.py"
