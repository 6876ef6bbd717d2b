# The papers' claims judged on the tables, the summary table, then the one HTML page that gathers the summary, every table's headline,
# every figure with its caption, and the provenance.


rule findings:
    input:
        runs=rules.gather_tables.output.runs,
        speedup=rules.speedup_tables.output.speedup,
        critical=rules.speedup_tables.output.critical,
        ratios=rules.sharpness_ratios.output[0],
    output:
        "results/tables/findings.parquet",
    params:
        studies=RESULTS_CONFIG["studies"],
        library=library("scripts/findings.py"),
    log:
        "results/logs/findings.log",
    script:
        "../../scripts/findings.py"


rule report_summary:
    input:
        runs=rules.gather_tables.output.runs,
        critical=rules.speedup_tables.output.critical,
        ratios=rules.sharpness_ratios.output[0],
    output:
        "results/tables/summary.parquet",
    params:
        studies=RESULTS_CONFIG["studies"],
        library=library("scripts/report_summary.py"),
    log:
        "results/logs/report_summary.log",
    script:
        "../../scripts/report_summary.py"


rule report:
    input:
        runs=rules.gather_tables.output.runs,
        speedup=rules.speedup_tables.output.speedup,
        critical=rules.speedup_tables.output.critical,
        ratios=rules.sharpness_ratios.output[0],
        summary=rules.report_summary.output[0],
        findings=rules.findings.output[0],
        figures=all_figures("png"),
    output:
        "results/report.html",
    params:
        # the captions' text, not their paths: an edit reruns the report, a moved checkout does not
        captions={figure: (CAPTIONS / f"{figure}.rst").read_text() for figure in FIGURES},
        figures=[{"name": figure, "section": category[0]} for figure, (_, category) in FIGURES.items()],
        config=RESULTS_CONFIG,
        library=library("scripts/report.py"),
    log:
        "results/logs/report.log",
    script:
        "../../scripts/report.py"
