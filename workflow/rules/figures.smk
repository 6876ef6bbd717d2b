# Figures, PNG and PDF, drawn from the tables by scripts/figure.py (batchlab.plots), one rule
# per figure. The PNGs go into the HTML report with the captions in workflow/report/.

TABLES = {
    "runs": rules.gather_tables.output.runs,
    "curves": rules.gather_tables.output.curves,
    "sharpness": rules.gather_sharpness.output[0],
    "interpolation": rules.gather_interpolation.output[0],
    "speedup": rules.speedup_tables.output.speedup,
    "critical": rules.speedup_tables.output.critical,
}

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
}

for figure, (tables, category) in FIGURES.items():

    rule:
        name:
            f"figure_{figure}"
        input:
            **{table: TABLES[table] for table in tables},
        output:
            png=f"results/figures/{figure}.png",
            pdf=f"results/figures/{figure}.pdf",
        params:
            figure=figure,
        log:
            f"results/logs/figures/{figure}.log",
        script:
            "../../scripts/figure.py"


def all_figures():
    return [getattr(rules, f"figure_{figure}").output for figure in FIGURES]
