# Figures, PNG and PDF, drawn from the tables by scripts/figure.py (batchlab.plots).


def figure_output(name):
    return {"png": f"results/figures/{name}.png", "pdf": f"results/figures/{name}.pdf"}


rule figure_training_curves:
    input:
        runs=rules.gather_tables.output.runs,
        curves=rules.gather_tables.output.curves,
    output:
        **figure_output("training_curves"),
    params:
        figure="training_curves",
    log:
        "results/logs/figures/training_curves.log",
    script:
        "../../scripts/figure.py"


rule figure_accuracy_vs_batch:
    input:
        runs=rules.gather_tables.output.runs,
    output:
        **figure_output("accuracy_vs_batch"),
    params:
        figure="accuracy_vs_batch",
    log:
        "results/logs/figures/accuracy_vs_batch.log",
    script:
        "../../scripts/figure.py"


rule figure_sharpness_vs_batch:
    input:
        runs=rules.gather_tables.output.runs,
        sharpness=rules.gather_sharpness.output[0],
    output:
        **figure_output("sharpness_vs_batch"),
    params:
        figure="sharpness_vs_batch",
    log:
        "results/logs/figures/sharpness_vs_batch.log",
    script:
        "../../scripts/figure.py"


rule figure_sharpness_along_training:
    input:
        runs=rules.gather_tables.output.runs,
        sharpness=rules.gather_sharpness.output[0],
    output:
        **figure_output("sharpness_along_training"),
    params:
        figure="sharpness_along_training",
    log:
        "results/logs/figures/sharpness_along_training.log",
    script:
        "../../scripts/figure.py"


rule figure_interpolation:
    input:
        interpolation=rules.gather_interpolation.output[0],
    output:
        **figure_output("interpolation"),
    params:
        figure="interpolation",
    log:
        "results/logs/figures/interpolation.log",
    script:
        "../../scripts/figure.py"
