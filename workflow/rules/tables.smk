# Tidy Parquet tables gathered from every run (contracts in DESIGN.md).


rule gather_tables:
    input:
        all_stack_markers(),
    output:
        runs="results/tables/runs.parquet",
        curves="results/tables/curves.parquet",
    params:
        summaries=all_run_files("run.json"),
        metrics=all_run_files("metrics.parquet"),
        library=library("scripts/gather_tables.py"),
    log:
        "results/logs/gather_tables.log",
    script:
        "../../scripts/gather_tables.py"


rule gather_sharpness:
    input:
        expand("results/analysis/{stack}.parquet", stack=ANALYSED_STACKS),
    output:
        "results/tables/sharpness.parquet",
    params:
        table="sharpness",
        library=library("scripts/concat_tables.py"),
    log:
        "results/logs/gather_sharpness.log",
    script:
        "../../scripts/concat_tables.py"


rule gather_interpolation:
    input:
        expand("results/interpolation/{study}.parquet", study=STUDY_PAIRS),
    output:
        "results/tables/interpolation.parquet",
    params:
        table="interpolation",
        library=library("scripts/concat_tables.py"),
    log:
        "results/logs/gather_interpolation.log",
    script:
        "../../scripts/concat_tables.py"


rule sharpness_ratios:
    input:
        runs=rules.gather_tables.output.runs,
        sharpness=rules.gather_sharpness.output[0],
    output:
        "results/tables/sharpness_ratios.parquet",
    params:
        library=library("scripts/sharpness_ratios.py"),
    log:
        "results/logs/sharpness_ratios.log",
    script:
        "../../scripts/sharpness_ratios.py"
