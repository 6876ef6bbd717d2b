# batchlab: how the SGD batch size shapes training.
# config -> grid of runs -> train -> tables -> figures. See README.md.
import os
from pathlib import Path

from batchlab import provenance
from batchlab.config import (
    analysed_runs, build_grid, build_pairs, build_stacks, check_config, check_data_roots, job_device, load_config_file,
    naming_files, reload_configs, results_config,
)

# config.yaml is the default; a --configfile replaces it rather than merging into it
# (merging would add the demo's studies to every other config). --config overrides
# (profiles use them) apply on top of either.
if not workflow.overwrite_configfiles:
    load_config_file("config.yaml")  # snakemake's own refusal of a broken file does not name it

    configfile: "config.yaml"

else:  # snakemake merged the files with their YAML anchors' shared mappings: merge them again, apart
    reload_configs(config, list(workflow.overwrite_configfiles), workflow.config_settings.config)


# Stops before any job, naming the config files and the offending key; fills the schema's defaults.
with naming_files(workflow.configfiles, overrides=bool(workflow.config_settings.config)):
    check_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
    check_data_roots(config)
    RUNS = build_grid(config)  # run_id -> RunSpec
    STACKS = build_stacks(config, RUNS)  # stack_id -> Stack: the runs trained together in one job
    PAIRS = build_pairs(config, RUNS)  # pair_id -> Pair: the runs whose healthy ends are interpolated
RUN_STACK = {run_id: stack.stack_id for stack in STACKS.values() for run_id in stack.runs}
ANALYSED = analysed_runs(config, RUNS)  # run_id -> measure every checkpoint (or only the final one)
ANALYSED_STACKS = {  # stack_id -> its analysed runs, for the stacks that have any
    stack_id: runs for stack_id, stack in STACKS.items() if (runs := [run_id for run_id in stack.runs if run_id in ANALYSED])
}
STUDY_PAIRS = {}  # study -> its pairs, for the studies that have any
for pair in PAIRS.values():
    STUDY_PAIRS.setdefault(pair.study, []).append(pair)
RESULTS_CONFIG = results_config(config)  # what the jobs that read the config carry: a setting that cannot change results reruns none
DEVICE = job_device(config["device"])  # in the params of the jobs that compute on it; see job_device

# The jobs must run the library this process imported and hashes into their params: the one next to
# this Snakefile, which snakemake put first on this process's path. A script job gets that path
# appended to its own, which today's editable install (a finder consulted after the path) does not
# override; an install that puts its checkout on the path itself (a .pth line) would, and a copy
# of the workflow would run the other checkout's code. PYTHONPATH comes before both.
os.environ["PYTHONPATH"] = os.pathsep.join([str(provenance.REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def library(script):
    """The hash of the batchlab modules `script` imports, transitively: in a rule's params, so that a
    change to the library code a job runs reruns the job (as a change to its script does), and a
    change to other code (a figure's) does not."""
    return provenance.library_hash(Path(workflow.basedir) / script)


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
        rules.findings.output,
        all_figures("png"),
        all_figures("pdf"),
        rules.report.output,
    default_target: True


onsuccess:
    # where to look once it is done (snakemake skips this when it had nothing to do)
    if Path(rules.report.output[0]).exists():
        print(f"The report: {Path(rules.report.output[0]).resolve()}")
