# batchlab: how the SGD batch size shapes training.
# config -> grid of runs -> train -> tables -> figures. See README.md.
from pathlib import Path

from batchlab.config import check_config, build_grid

# config.yaml is the default; a --configfile replaces it rather than merging into it
# (merging would add the demo's studies to every other config).
if not config:

    configfile: "config.yaml"


# Stops before any job, naming the offending key; fills the schema's defaults.
check_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
RUNS = build_grid(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        rules.gather_tables.output,
        rules.figure_training_curves.output,
        rules.figure_accuracy_vs_batch.output,
    default_target: True
