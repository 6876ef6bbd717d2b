# Figures, PNG and PDF, drawn from the tables.


rule figure_training_curves:
    input:
        runs=rules.gather_tables.output.runs,
        curves=rules.gather_tables.output.curves,
    output:
        png="results/figures/training_curves.png",
        pdf="results/figures/training_curves.pdf",
    log:
        "results/logs/figures/training_curves.log",
    script:
        "../../scripts/figure_training_curves.py"


rule figure_accuracy_vs_batch:
    input:
        runs=rules.gather_tables.output.runs,
    output:
        png="results/figures/accuracy_vs_batch.png",
        pdf="results/figures/accuracy_vs_batch.pdf",
    log:
        "results/logs/figures/accuracy_vs_batch.log",
    script:
        "../../scripts/figure_accuracy_vs_batch.py"
