# Each data set is prepared once into results/data/<name>.npz; training jobs read that file.
# On a cluster it runs where snakemake runs: compute nodes often cannot download.
# The params hold every option of datasets.<name>, the schema's defaults filled in (root,
# augment, normalize, ...): a config that prepares a data set otherwise (an image set's
# augmentation or normalisation, another root) prepares it again, and snakemake reruns the
# training jobs that read it.

localrules:
    prepare_data,


rule prepare_data:
    output:
        "results/data/{dataset}.npz",
    params:
        options=lambda wildcards: config["datasets"].get(wildcards.dataset, {}),
        library=library("scripts/prepare_data.py"),
    log:
        "results/logs/prepare_data/{dataset}.log",
    script:
        "../../scripts/prepare_data.py"
