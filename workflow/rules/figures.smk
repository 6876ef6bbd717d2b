# Figures, PNG and PDF, drawn from the tables by scripts/figures.py (batchlab.plots). The PNGs
# go into the HTML report with the captions in workflow/report/, and into snakemake's own
# (`snakemake --report report.zip`).

TABLES = {
    "runs": rules.gather_tables.output.runs,
    "curves": rules.gather_tables.output.curves,
    "sharpness": rules.gather_sharpness.output[0],
    "interpolation": rules.gather_interpolation.output[0],
    "speedup": rules.speedup_tables.output.speedup,
    "critical": rules.speedup_tables.output.critical,
}

CAPTIONS = Path(workflow.basedir) / "workflow" / "report"  # a figure's caption: <figure>.rst

# figure -> (tables it is drawn from, report section); the tables are passed to the figure's
# function in batchlab.plots by these names, so they must match its parameters.
FIGURES = {
    "training_curves": (["runs", "curves"], "1 Generalization (Masters & Luschi)"),
    "accuracy_vs_batch": (["runs"], "1 Generalization (Masters & Luschi)"),
    "accuracy_vs_base_lr": (["runs"], "1 Generalization (Masters & Luschi)"),
    "generalization_gap": (["runs"], "1 Generalization (Masters & Luschi)"),
    "sharpness_vs_batch": (["runs", "sharpness"], "2 Sharpness (Keskar)"),
    "sharpness_along_training": (["runs", "sharpness"], "2 Sharpness (Keskar)"),
    "interpolation": (["interpolation"], "2 Sharpness (Keskar)"),
    "steps_to_target": (["speedup", "critical"], "3 Critical batch size (Golmant, Shallue)"),
    "speedup": (["speedup"], "3 Critical batch size (Golmant, Shallue)"),
    "best_lr": (["speedup", "runs"], "3 Critical batch size (Golmant, Shallue)"),
    "noise_scale": (["runs", "sharpness", "critical"], "3 Critical batch size (Golmant, Shallue)"),
    "noise_vs_bcrit": (["critical"], "3 Critical batch size (Golmant, Shallue)"),
}

# One job per report section, drawing its figures as soon as their tables exist: a figure is a
# second or two of work, starting Python with pandas and matplotlib about three.
SECTIONS = {}  # section -> its figures, in FIGURES' order
for figure, (_, section) in FIGURES.items():
    SECTIONS.setdefault(section, []).append(figure)

for number, (section, figures) in enumerate(SECTIONS.items(), start=1):

    rule:
        name:
            f"figures_{number}"
        input:
            **{table: TABLES[table] for figure in figures for table in FIGURES[figure][0]},
        output:
            # marked for `snakemake --report` too, with the same captions
            png=[report(f"results/figures/{figure}.png", caption=f"../report/{figure}.rst", category=section)
                 for figure in figures],
            pdf=[f"results/figures/{figure}.pdf" for figure in figures],
        params:
            tables={figure: FIGURES[figure][0] for figure in figures},
            library=library("scripts/figures.py"),
        log:
            f"results/logs/figures/section{number}.log",
        script:
            "../../scripts/figures.py"


def all_figures(kind="png"):
    return [f"results/figures/{figure}.{kind}" for figure in FIGURES]
