# Tidy Parquet tables gathered from every run (contracts in DESIGN.md).


rule gather_tables:
    input:
        summaries=all_run_files("run.json"),
        metrics=all_run_files("metrics.parquet"),
    output:
        runs="results/tables/runs.parquet",
        curves="results/tables/curves.parquet",
    log:
        "results/logs/gather_tables.log",
    script:
        "../../scripts/gather_tables.py"
