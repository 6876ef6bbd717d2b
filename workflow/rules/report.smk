# The summary table that opens the HTML report (workflow/report/workflow.rst includes it).
# Build the report itself with: snakemake --report results/report.html (make demo does).


rule report_summary:
    input:
        runs=rules.gather_tables.output.runs,
        sharpness=rules.gather_sharpness.output[0],
        critical=rules.speedup_tables.output.critical,
    output:
        rst="results/report/summary.rst",
        table="results/tables/summary.parquet",
    params:
        settings={name: study["speedup"] for name, study in config["studies"].items()},
    log:
        "results/logs/report_summary.log",
    script:
        "../../scripts/report_summary.py"
