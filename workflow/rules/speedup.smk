# Steps to target, speed-up curves and the critical batch size, from the dense curves.


rule speedup_tables:
    input:
        runs=rules.gather_tables.output.runs,
        curves=rules.gather_tables.output.curves,
        sharpness=rules.gather_sharpness.output[0],
    output:
        speedup="results/tables/speedup.parquet",
        critical="results/tables/critical_batch.parquet",
    params:
        settings={name: study["speedup"] for name, study in config["studies"].items()},
        library=library("scripts/speedup_tables.py"),
    log:
        "results/logs/speedup_tables.log",
    script:
        "../../scripts/speedup_tables.py"
