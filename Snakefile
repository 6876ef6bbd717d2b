# batchlab: how the SGD batch size shapes training.
# config -> grid of runs -> train -> tables -> figures. See README.md.
from pathlib import Path

from batchlab.config import analysed_runs, build_grid, build_pairs, build_stacks, check_config, check_data_roots

# config.yaml is the default; a --configfile replaces it rather than merging into it
# (merging would add the demo's studies to every other config). --config overrides
# (profiles use them) apply on top of either.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# Stops before any job, naming the offending key; fills the schema's defaults.
check_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
check_data_roots(config)
RUNS = build_grid(config)  # run_id -> RunSpec
STACKS = build_stacks(config, RUNS)  # stack_id -> Stack: the runs trained together in one job
RUN_STACK = {run_id: stack.stack_id for stack in STACKS.values() for run_id in stack.runs}
ANALYSED = analysed_runs(config, RUNS)  # run_id -> measure every checkpoint (or only the final one)
ANALYSED_STACKS = {  # stack_id -> its analysed runs, for the stacks that have any
    stack_id: runs for stack_id, stack in STACKS.items() if (runs := [run_id for run_id in stack.runs if run_id in ANALYSED])
}
PAIRS = build_pairs(config, RUNS)  # pair_id -> Pair: the runs whose healthy ends are interpolated
STUDY_PAIRS = {}  # study -> its pairs, for the studies that have any
for pair in PAIRS.values():
    STUDY_PAIRS.setdefault(pair.study, []).append(pair)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/interpolation.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/speedup.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.gather_tables.output,
        rules.gather_sharpness.output,
        rules.gather_interpolation.output,
        rules.speedup_tables.output,
        rules.sharpness_ratios.output,
        all_figures("png"),
        all_figures("pdf"),
        rules.report.output,
    default_target: True
